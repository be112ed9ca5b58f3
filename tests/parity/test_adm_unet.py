"""The ADM U-Net backbone: guided-diffusion parity, key layout, routing, presets and config errors."""
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from dtr_plugins.backbones import adm_unet
from dtr_plugins.backbones.adm_unet import ADMParams, ADMUNet, AttentionBlock, ResBlock, build_adm_unet
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.strategies.dtr import SlidingWindow
from dtr_plugins.strategies.vanilla import Vanilla

from ..conftest import FIXTURES, ROOT

CONFIGS = ROOT / "configs"

TINY = dict(image_size=16, in_channels=3, model_channels=32, num_res_blocks=1, attention_resolutions=[8],
            channel_mult=[1, 2], num_classes=10, num_heads=2, use_scale_shift_norm=True, learn_sigma=True)


def randomized(model, seed=0):
    """Random weights everywhere (the zero-initialised last layers would hide routing and parity bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(p[0].numel(), 1)) if p.dim() > 1 else 0.1))
    return model.eval()


def inputs(model, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.in_channels, model.image_size, model.image_size, generator=g)
    t = torch.tensor([0, 500, 999, 250, 750, 10][:n])
    y = torch.arange(n) % 10 if model.num_classes else None
    return x, t, y


# --------------------------------------------------------------------------------------------------
# An independent, functional reference of guided-diffusion's UNetModel forward, read straight off a
# state dict by key name (einsum attention with q and k each scaled by ch ** -0.25). It is checked
# against the official output fixture first, then used for the cases the fixture does not cover.
# --------------------------------------------------------------------------------------------------

def _gn(x, sd, key):
    return F.group_norm(x.float(), 32, sd[f"{key}.weight"], sd[f"{key}.bias"])


def _ref_res(x, emb, sd, key, scale_shift, resample=None):
    h = F.silu(_gn(x, sd, f"{key}.in_layers.0"))
    if resample == "down":
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    elif resample == "up":
        h, x = F.interpolate(h, scale_factor=2.0, mode="nearest"), F.interpolate(x, scale_factor=2.0, mode="nearest")
    h = F.conv2d(h, sd[f"{key}.in_layers.2.weight"], sd[f"{key}.in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd[f"{key}.emb_layers.1.weight"], sd[f"{key}.emb_layers.1.bias"])[..., None, None]
    if scale_shift:
        scale, shift = e.chunk(2, dim=1)
        h = _gn(h, sd, f"{key}.out_layers.0") * (1 + scale) + shift
    else:
        h = _gn(h + e, sd, f"{key}.out_layers.0")
    h = F.conv2d(F.silu(h), sd[f"{key}.out_layers.3.weight"], sd[f"{key}.out_layers.3.bias"], padding=1)
    if f"{key}.skip_connection.weight" in sd:
        x = F.conv2d(x, sd[f"{key}.skip_connection.weight"], sd[f"{key}.skip_connection.bias"])
    return x + h


def _ref_attn(x, sd, key, heads, new_order):
    b, c, hh, ww = x.shape
    flat = x.reshape(b, c, -1)
    qkv = F.conv1d(_gn(flat, sd, f"{key}.norm"), sd[f"{key}.qkv.weight"], sd[f"{key}.qkv.bias"])
    ch = c // heads
    if new_order:
        q, k, v = (z.reshape(b * heads, ch, -1) for z in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)
    s = ch ** -0.25
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
    a = F.conv1d(a, sd[f"{key}.proj_out.weight"], sd[f"{key}.proj_out.bias"])
    return (flat + a).reshape(b, c, hh, ww)


def reference_forward(sd, cfg, x, t, y=None):
    mc, mult = cfg["model_channels"], cfg["channel_mult"]
    ss, updown = cfg["use_scale_shift_norm"], cfg.get("resblock_updown", False)
    new = cfg.get("use_new_attention_order", False)
    attn_res = set(cfg["attention_resolutions"])

    def heads(ch, up=False):
        if cfg.get("num_head_channels", -1) != -1:
            return ch // cfg["num_head_channels"]
        n = cfg.get("num_heads_upsample", -1) if up else -1
        return cfg["num_heads"] if n == -1 else n

    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    if y is not None:
        emb = emb + sd["label_emb.weight"][y]

    h = F.conv2d(x, sd["input_blocks.0.0.weight"], sd["input_blocks.0.0.bias"], padding=1)
    hs, n, res = [h], 1, cfg["image_size"]
    for level in range(len(mult)):
        for _ in range(cfg["num_res_blocks"]):
            h = _ref_res(h, emb, sd, f"input_blocks.{n}.0", ss)
            if res in attn_res:
                h = _ref_attn(h, sd, f"input_blocks.{n}.1", heads(h.shape[1]), new)
            hs.append(h)
            n += 1
        if level != len(mult) - 1:
            if updown:
                h = _ref_res(h, emb, sd, f"input_blocks.{n}.0", ss, "down")
            else:
                h = F.conv2d(h, sd[f"input_blocks.{n}.0.op.weight"], sd[f"input_blocks.{n}.0.op.bias"],
                             stride=2, padding=1)
            hs.append(h)
            n += 1
            res //= 2
    h = _ref_res(h, emb, sd, "middle_block.0", ss)
    h = _ref_attn(h, sd, "middle_block.1", heads(h.shape[1]), new)
    h = _ref_res(h, emb, sd, "middle_block.2", ss)
    n = 0
    for level in reversed(range(len(mult))):
        for i in range(cfg["num_res_blocks"] + 1):
            key = f"output_blocks.{n}"
            h = _ref_res(torch.cat([h, hs.pop()], dim=1), emb, sd, f"{key}.0", ss)
            m = 1
            if res in attn_res:
                h = _ref_attn(h, sd, f"{key}.1", heads(h.shape[1], up=True), new)
                m = 2
            if level and i == cfg["num_res_blocks"]:
                if updown:
                    h = _ref_res(h, emb, sd, f"{key}.{m}", ss, "up")
                else:
                    h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                    h = F.conv2d(h, sd[f"{key}.{m}.conv.weight"], sd[f"{key}.{m}.conv.bias"], padding=1)
                res *= 2
            n += 1
    h = F.silu(_gn(h, sd, "out.0"))
    return F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)


def _official():
    data = torch.load(FIXTURES / "adm_unet_tiny_official.pt", weights_only=True)
    cfg = dict(data["config"])
    cfg["attention_resolutions"] = list(cfg.pop("attention_resolutions_as_resolutions"))  # ours: resolutions
    cfg["learn_sigma"] = cfg.pop("out_channels") == 2 * cfg["in_channels"]
    return data, cfg


# --------------------------------------------------------------------------------------------------
# parity with guided-diffusion
# --------------------------------------------------------------------------------------------------

def test_official_state_dict_loads_and_matches():
    data, cfg = _official()
    model = ADMUNet(**cfg).eval()
    assert set(model.state_dict()) == set(data["state_dict"])  # identical key names
    model.load_state_dict(data["state_dict"], strict=True)
    with torch.no_grad():
        out = model(data["x"], data["t"], data["y"])
    assert out.shape == data["out"].shape
    torch.testing.assert_close(out, data["out"], atol=1e-4, rtol=0)


def test_reference_reproduces_official_fixture():
    data, cfg = _official()
    ref = reference_forward(data["state_dict"], cfg, data["x"], data["t"], data["y"])
    torch.testing.assert_close(ref, data["out"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("updown", [False, True])
@pytest.mark.parametrize("new_order", [False, True])
@pytest.mark.parametrize("heads", [dict(num_heads=2), dict(num_head_channels=32, num_heads_upsample=4)])
def test_matches_reference_without_updown_and_both_orders(updown, new_order, heads):
    cfg = dict(TINY, resblock_updown=updown, use_new_attention_order=new_order, use_scale_shift_norm=not updown,
               **heads)
    cfg.setdefault("num_head_channels", -1)
    model = randomized(ADMUNet(**cfg))
    sd = model.state_dict()
    if not updown:
        assert "input_blocks.2.0.op.weight" in sd and "output_blocks.1.2.conv.weight" in sd
    x, t, y = inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), reference_forward(sd, cfg, x, t, y), atol=1e-4, rtol=1e-4)


def test_legacy_and_new_order_agree_with_permuted_qkv():
    legacy = randomized(ADMUNet(**dict(TINY, num_heads=2)))
    new = ADMUNet(**dict(TINY, num_heads=2, use_new_attention_order=True)).eval()
    sd = legacy.state_dict()
    for key in [k for k in sd if k.endswith((".qkv.weight", ".qkv.bias"))]:
        w = sd[key]
        heads, c = 2, w.shape[0] // 3
        # legacy rows: [head, q/k/v, ch]; new rows: [q/k/v, head, ch]
        sd[key] = w.reshape(heads, 3, c // heads, *w.shape[1:]).transpose(0, 1).reshape(w.shape)
    new.load_state_dict(sd)
    x, t, y = inputs(legacy)
    with torch.no_grad():
        torch.testing.assert_close(new(x, t, y), legacy(x, t, y), atol=1e-5, rtol=1e-5)


def test_unconditional_and_sigma_options():
    model = ADMUNet(**dict(TINY, num_classes=0, learn_sigma=False))
    assert "label_emb.weight" not in model.state_dict() and model.num_classes is None
    x, t, _ = inputs(model)
    assert model(x, t).shape == x.shape
    cond = ADMUNet(**TINY)
    with pytest.raises(ValueError, match="labels"):
        cond(x, t)


# --------------------------------------------------------------------------------------------------
# routing
# --------------------------------------------------------------------------------------------------

def _routed(model, strategy):
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(), 1000))
    return model


def test_routed_channels_are_resblock_inputs_in_forward_order():
    data, cfg = _official()
    model = ADMUNet(**cfg)
    sd = data["state_dict"]
    # every ResBlock's input width, read off its first GroupNorm, in forward order
    keys = [k[: -len(".in_layers.0.weight")] for k in sd if k.endswith(".in_layers.0.weight")]
    stage = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}
    order = sorted(keys, key=lambda k: (stage[k.split(".")[0]], *[int(p) for p in k.split(".")[1:] if p.isdigit()]))
    assert model.routed_channels() == [sd[f"{k}.in_layers.0.weight"].numel() for k in order]
    assert model.routed_channels() == [32, 32, 32, 64, 64, 128, 96, 64, 96, 64]  # decoder: after the concat


def test_vanilla_equals_plain_unet_exactly():
    plain = randomized(ADMUNet(**TINY))
    x, t, y = inputs(plain)
    with torch.no_grad():
        expected = plain(x, t, y)
        routed = _routed(plain, Vanilla())
        assert routed.plan.is_dense
        assert torch.equal(routed(x, t, y), expected)


def test_dtr_changes_outputs_and_stays_finite():
    model = randomized(ADMUNet(**TINY))
    x, t, y = inputs(model)
    with torch.no_grad():
        plain = model(x, t, y)
        out = _routed(model, SlidingWindow())(x, t, y)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, plain, atol=1e-3)


def test_one_table_per_distinct_width():
    for cfg in (TINY, dict(TINY, route_attention=True), dict(TINY, num_res_blocks=2, channel_mult=[1, 2, 2])):
        model = _routed(ADMUNet(**cfg), SlidingWindow())
        widths = model.routed_channels()
        assert model.plan.num_tables == len(set(widths)) < len(widths)
        for table, layers in model.plan.tables():
            assert {widths[i] for i in layers} == {table.shape[1]}
            assert table.dtype == torch.bool


def test_route_attention_adds_attention_layers():
    base = ADMUNet(**TINY)
    with_attn = ADMUNet(**dict(TINY, route_attention=True))
    n_attn = sum(isinstance(m, AttentionBlock) for m in with_attn.modules())
    n_res = sum(isinstance(m, ResBlock) for m in base.modules())
    assert len(base.routed_channels()) == n_res
    assert len(with_attn.routed_channels()) == n_res + n_attn
    # forward order: res 32, (Downsample), res 32->64, attention 64, middle res 64, middle attention 64
    assert with_attn.routed_channels()[:5] == [32, 32, 64, 64, 64]
    model = randomized(with_attn)
    x, t, y = inputs(model)
    seen = []
    model.middle_block[1].register_forward_pre_hook(lambda mod, args: seen.append(args[1]), with_kwargs=False)
    with torch.no_grad():
        plain = model(x, t, y)
        out = _routed(model, SlidingWindow())(x, t, y)
    assert seen[0] is None and seen[1] is not None and seen[1].shape == (3, 64, 1, 1)
    assert torch.isfinite(out).all() and not torch.allclose(out, plain, atol=1e-3)


def test_masks_are_per_sample_rows():
    model = _routed(randomized(ADMUNet(**TINY)), SlidingWindow())
    x, t, y = inputs(model, n=4)
    captured = []
    first = model.input_blocks[1][0]
    first.register_forward_hook(lambda mod, args, out: captured.append(args[2]))
    with torch.no_grad():
        batched = model(x, t, y)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(4)])
    mask = captured[0]
    assert mask.shape == (4, 32, 1, 1) and mask.dtype == x.dtype
    table = model.plan.table(model.plan.layer_table[0])
    assert torch.equal(mask[:, :, 0, 0].bool(), table[t])
    assert not torch.equal(mask[0], mask[2])  # t = 0 and t = 999 use different windows
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(), dict(down=True), dict(out_channels=64), dict(up=True, out_channels=64)])
def test_resblock_applies_skip_plus_branch_of_masked_input(kwargs):
    torch.manual_seed(0)
    block = randomized(ResBlock(32, 16, 0.0, use_scale_shift_norm=True, **kwargs))
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    mask = (torch.rand(2, 32, 1, 1) > 0.5).float()

    def skip(z):
        return block.skip_connection(z if block.resample is None else block.resample(z))

    with torch.no_grad():
        branch = block(mask * x, emb) - skip(mask * x)  # F(m * x)
        torch.testing.assert_close(block(x, emb, mask), skip(x) + branch, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# speed / precision options
# --------------------------------------------------------------------------------------------------

def test_channels_last_gives_the_same_outputs():
    model = randomized(ADMUNet(**TINY))
    fast = ADMUNet(**dict(TINY, channels_last=True)).eval()
    fast.load_state_dict(model.state_dict())
    assert fast.input_blocks[1][0].in_layers[2].weight.is_contiguous(memory_format=torch.channels_last)
    x, t, y = inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, t, y), model(x, t, y), atol=1e-5, rtol=1e-5)


def test_bf16_forward_is_finite_and_close():
    model = _routed(randomized(ADMUNet(**TINY)), SlidingWindow())
    x, t, y = inputs(model)
    with torch.no_grad():
        ref = model(x, t, y)
        out = model.to(torch.bfloat16)(x.bfloat16(), t, y)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_a_few_training_steps_on_digits():
    from dtr_plugins.data.digits import Digits

    torch.manual_seed(0)
    data = Digits(image_size=8)
    model = _routed(build_adm_unet(preset="small"), SlidingWindow())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).float()
    losses = []
    for _ in range(3):
        idx = torch.randint(0, len(data), (8,))
        x0, y = data.images[idx], data.labels[idx]
        t = torch.randint(0, 1000, (8,))
        noise = torch.randn_like(x0)
        xt = abar[t].sqrt()[:, None, None, None] * x0 + (1 - abar[t]).sqrt()[:, None, None, None] * noise
        out = model(xt, t, y)
        assert out.shape == (8, 2, 8, 8)
        loss = F.mse_loss(out[:, :1], noise)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)


# --------------------------------------------------------------------------------------------------
# presets, registration, configs
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,params,label_shape", [("adm-64", 295_904_454, (1000, 768)),
                                                       ("adm-128", 421_529_606, (1000, 1024)),
                                                       ("adm-256", 553_838_086, (1000, 1024))])
def test_imagenet_presets_have_the_released_sizes(preset, params, label_shape):
    # guided-diffusion's ImageNet models: 296M, 422M and 554M parameters
    with torch.device("meta"):
        model = build_adm_unet(preset=preset)
    assert model.preset == preset
    assert sum(p.numel() for p in model.parameters()) == params
    sd = model.state_dict()
    assert sd["label_emb.weight"].shape == label_shape and sd["out.2.weight"].shape[0] == 6


def test_adm64_preset_matches_guided_diffusion_flags():
    p = ADMParams(preset="adm-64")
    assert (p.model_channels, p.num_res_blocks, p.channel_mult) == (192, 3, (1, 2, 3, 4))
    assert p.attention_resolutions == (32, 16, 8)
    assert p.num_head_channels == 64
    assert (p.use_new_attention_order, p.use_scale_shift_norm, p.resblock_updown) == (True, True, True)
    assert (p.dropout, p.num_classes, p.learn_sigma) == (0.1, 1000, True)
    # explicit keys override the preset; the dump re-validates to itself (config snapshots)
    q = ADMParams(preset="adm-64", dropout=0.0, num_classes=0)
    assert q.dropout == 0.0 and q.num_classes is None
    assert ADMParams.model_validate(q.model_dump()) == q


def test_registered_and_built_by_name():
    registry = build_registry([adm_unet], entry_points=False)
    info = registry.get("backbone", "adm_unet")
    assert info.params is ADMParams and info.description
    model = registry.build("backbone", "adm_unet", preset="small")
    assert isinstance(model, ADMUNet) and model.image_size == 8 and model.in_channels == 1
    x, t, y = inputs(model)
    assert model(x, t, y).shape == (3, 2, 8, 8)


def test_configs_are_valid_for_the_backbone():
    registry = build_registry([adm_unet], entry_points=False)
    info = registry.get("backbone", "adm_unet")
    for name, size in [("adm_digits.yaml", 8), ("adm64_imagenet_dtr.yaml", 64)]:
        cfg = yaml.safe_load((CONFIGS / name).read_text())
        params = {k: v for k, v in cfg["backbone"].items() if k != "name"}
        p = info.validate(params, where="backbone")
        assert cfg["backbone"]["name"] == "adm_unet" and cfg["routing"]["name"] == "dtr"
        assert p.image_size == cfg["data"]["image_size"] == size
        assert p.learn_sigma == cfg["diffusion"]["learn_sigma"]
    assert yaml.safe_load((CONFIGS / "adm64_imagenet_dtr.yaml").read_text())["diffusion"]["schedule"] == "cosine"


@pytest.mark.parametrize("params,key,allowed", [
    (dict(preset="small", image_size=10, channel_mult=[1, 2, 2]), "image_size", "multiples of 4"),
    (dict(preset="small", attention_resolutions=[2]), "attention_resolutions", "allowed: 8, 4"),
    (dict(preset="adm-64", attention_resolutions="32,16,6"), "attention_resolutions", "allowed: 64, 32, 16, 8"),
    (dict(preset="small", num_head_channels=24), "num_head_channels", "divisor of 64"),
    (dict(preset="small", num_head_channels=-1, num_heads=3), "num_heads", "divisor of 64"),
    (dict(preset="adm-128", num_heads=3), "num_heads", "divisor of 256"),
    (dict(preset="small", num_head_channels=-1, num_heads_upsample=5), "num_heads_upsample", "divisor of 64"),
    (dict(preset="small", model_channels=48), "model_channels", "multiple of 32"),
    (dict(image_size=48), "channel_mult", "e.g. [1, 2, 2]"),
    (dict(preset="adm-65"), "preset", "'adm-64'"),
    (dict(preset="small", patch_size=2), "patch_size", "allowed: attention_resolutions"),
])
def test_config_errors_are_one_line_naming_the_key(params, key, allowed):
    info = build_registry([adm_unet], entry_points=False).get("backbone", "adm_unet")
    with pytest.raises(ConfigError) as err:
        info.validate(params, where="backbone")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"backbone.{key}:") and allowed in msg


def test_direct_construction_reports_config_errors():
    with pytest.raises(ConfigError, match=r"^adm_unet\.image_size: .*multiples of 2"):
        ADMUNet(**dict(TINY, image_size=15))
    with pytest.raises(ConfigError, match=r"^adm_unet\.num_heads: "):
        ADMUNet(**dict(TINY, num_heads=3))


def test_guidance_without_null_class_is_a_clear_error():
    from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
    from dtr_plugins.core.errors import ConfigError

    model = build_adm_unet(preset="small", num_classes=4)
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", 100))
    with pytest.raises(ConfigError, match="sample.cfg_scale: .*has no null class"):
        diffusion.sample(model, (2, 1, 8, 8), respacing="ddim2", model_kwargs={"y": torch.tensor([0, 1])},
                         cfg_scale=2.0, progress=False)


def test_routed_layers_carry_their_plan_index_so_forward_order_does_not_matter():
    model = _routed(randomized(ADMUNet(**dict(TINY, route_attention=True))), SlidingWindow())
    routed = model._routed_layers()
    assert [layer.route_index for layer in routed] == list(range(len(model.routed_channels())))
    plain = ADMUNet(**TINY)  # attention blocks not routed: they carry no index
    attention = [m for m in plain.modules() if isinstance(m, AttentionBlock)]
    assert attention and all(m.route_index is None for m in attention)
    # a stage run on its own (out of forward order) still asks for its own layers' indices
    asked = []
    middle = model.middle_block
    emb_dim = model.time_embed[2].out_features
    h = torch.randn(2, middle[0].channels, 4, 4)
    with torch.no_grad():
        middle(h, torch.randn(2, emb_dim), lambda index, x: asked.append(index))
    assert asked == [middle[0].route_index, middle[1].route_index, middle[2].route_index]
    assert asked == [routed.index(middle[i]) for i in range(3)] and asked[0] > 0
    # a route that hands every layer the row of its own index gives the forward pass's output
    x, t, y = inputs(model)
    with torch.no_grad():
        expected = model(x, t, y)
        rows = model.layer_masks(t.long(), x.dtype)
        seen = []

        def route(index, x_in):
            seen.append(index)
            return None if rows[index] is None else rows[index][:, :, None, None]

        model._router = lambda task, dtype, emb: route
        assert torch.equal(model(x, t, y), expected)
    assert seen == list(range(len(routed)))
