"""Routing sites: DTR over attention heads and MLP hidden units, sliced vs masked dense execution."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dtr_plugins.backbones.dit import Attention, DiT, DiTBlock, Mlp
from dtr_plugins.compose import build_model
from dtr_plugins.core.config import config_from_dict, load_config
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.routing import ActiveUnits, RoutingPlan, shared_timestep
from dtr_plugins.strategies.dtr import SlidingWindow
from dtr_plugins.strategies.random import RandomRouting
from dtr_plugins.strategies.vanilla import Vanilla

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10)
T = 1000
UNIT_SITES = ("heads", "mlp", "heads_mlp")


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (DiT's init zeroes adaLN, which would hide every routing effect)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module


def routed_dit(strategy, site: str, slice_shared: bool = True, seed: int = 0) -> DiT:
    model = randomized(DiT(**TINY), seed)
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(site), T, site=site, slice_shared=slice_shared))
    return model.eval()


def inputs(n: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def contiguous(start: int, stop: int, total: int) -> ActiveUnits:
    return ActiveUnits(count=stop - start, total=total, start=start, stop=stop)


def indexed(units: list[int], total: int) -> ActiveUnits:
    return ActiveUnits(count=len(units), total=total, index=torch.tensor(units, dtype=torch.long))


def mask_of(active: list[int], total: int, n: int) -> torch.Tensor:
    row = torch.zeros(total)
    row[active] = 1.0
    return row.expand(n, total).clone()


# --- sliced == masked dense, on every block kind ------------------------------------------------

@pytest.mark.parametrize("active", [[1, 2], [0, 3], [2], [0, 1, 2, 3], []])
def test_attention_sliced_matches_masked(active):
    attn = randomized(Attention(32, 4))
    x = torch.randn(3, 5, 32)
    dense = attn(x, mask_of(active, 4, 3))
    run = (contiguous(active[0], active[-1] + 1, 4) if active and active == list(range(active[0], active[-1] + 1))
           else indexed(active, 4))
    torch.testing.assert_close(attn(x, run), dense, atol=1e-5, rtol=0)


def test_attention_mask_zeroes_head_outputs_before_proj():
    """The masked dense path against a head-by-head reference written from the equation."""
    attn = randomized(Attention(32, 4))
    x = torch.randn(2, 5, 32)
    mask = torch.tensor([[1.0, 0, 1, 1], [0, 1, 0, 1]])
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    outs = []
    for h in range(4):
        sl = slice(8 * h, 8 * h + 8)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(8), dim=-1)
        outs.append(mask[:, h, None, None] * (weights @ v[..., sl]))
    reference = attn.proj(torch.cat(outs, dim=-1))
    torch.testing.assert_close(attn(x, mask), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("width", [1, 4])
@pytest.mark.parametrize("active", [list(range(3, 12)), [0, 5, 7, 15], list(range(16)), []])
def test_mlp_sliced_matches_masked(active, width):
    mlp = randomized(Mlp(16, 16 * width, unit_width=width))
    assert mlp.num_units == 16
    x = torch.randn(3, 5, 16)
    mask = mask_of(active, 16, 3)
    channels = mask.repeat_interleave(width, dim=1)  # unit u owns hidden channels [u * width, (u + 1) * width)
    reference = mlp.fc2(mlp.act(mlp.fc1(x)) * channels[:, None, :])
    torch.testing.assert_close(mlp(x, mask), reference, atol=0, rtol=0)
    run = contiguous(active[0], active[-1] + 1, 16) if active == list(range(3, 12)) else indexed(active, 16)
    torch.testing.assert_close(mlp(x, run), reference, atol=1e-5, rtol=0)


def test_dit_block_sliced_matches_masked():
    block = randomized(DiTBlock(32, 4))
    x, c = torch.randn(3, 5, 32), torch.randn(3, 32)
    assert (block.mlp.unit_width, block.mlp.num_units) == (8, 16)  # head-wide MLP units
    heads, hidden = [1, 2, 3], list(range(2, 12))
    dense = block(x, c, None, mask_of(heads, 4, 3), mask_of(hidden, 16, 3))
    sliced = block(x, c, None, contiguous(1, 4, 4), contiguous(2, 12, 16))
    torch.testing.assert_close(sliced, dense, atol=1e-5, rtol=0)
    gathered = block(x, c, None, indexed(heads, 4), indexed(hidden, 128))
    torch.testing.assert_close(gathered, dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("site", UNIT_SITES)
@pytest.mark.parametrize("strategy", [SlidingWindow(alpha=4.0, beta=0.8), SlidingWindow(alpha=1.0, beta=0.5),
                                      RandomRouting(beta=0.6, seed=3)], ids=repr)
def test_dit_sliced_matches_masked_dense(site, strategy):
    sliced, dense = routed_dit(strategy, site), routed_dit(strategy, site, slice_shared=False)
    x, y = inputs()
    with torch.no_grad():
        for step in (0, 250, 999):
            t = torch.full((4,), step)
            torch.testing.assert_close(sliced(x, t, y), dense(x, t, y), atol=1e-5, rtol=0)


def test_sliced_path_is_taken_only_for_a_shared_timestep():
    model = routed_dit(SlidingWindow(beta=0.8), "heads_mlp")
    shared = model.block_routes(torch.full((3,), 700), torch.float32, torch.device("cpu"))
    for mask, heads, mlp in shared:
        assert mask is None and isinstance(heads, ActiveUnits) and isinstance(mlp, ActiveUnits)
        assert heads.index is None and mlp.index is None          # DTR's window: views, no gather
        assert (heads.count, heads.total) == (3, 4) and (mlp.count, mlp.total) == (12, 16)
    mixed = model.block_routes(torch.tensor([700, 3, 700]), torch.float32, torch.device("cpu"))
    for mask, heads, mlp in mixed:
        assert mask is None and heads.shape == (3, 4) and mlp.shape == (3, 16)
        assert torch.equal(heads[1].bool(), model.routing.table(0)[3])


def test_mixed_timesteps_match_per_sample_runs():
    model = routed_dit(SlidingWindow(beta=0.5), "heads_mlp")
    x, y = inputs()
    t = torch.tensor([0, 999, 400, 999])
    with torch.no_grad():
        batched = model(x, t, y)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_sliced_and_masked_gradients_agree():
    sliced = routed_dit(SlidingWindow(beta=0.5), "heads_mlp")       # eval mode, gradients on: sliced
    dense = routed_dit(SlidingWindow(beta=0.5), "heads_mlp").train()  # training mode: masked dense
    x, y = inputs()
    t = torch.full((4,), 321)
    assert isinstance(sliced.block_routes(t, torch.float32, x.device)[0][1], ActiveUnits)
    assert isinstance(dense.block_routes(t, torch.float32, x.device)[0][1], torch.Tensor)
    dense.y_embedder.dropout_prob = 0.0  # no random label dropout in this comparison
    for model in (sliced, dense):
        model(x, t, y).square().mean().backward()
    for (name, a), (_, b) in zip(sliced.named_parameters(), dense.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    fc1 = sliced.blocks[0].mlp.fc1.weight.grad
    start = sliced.routing.active_units(321)[1].start * 16  # MLP units of head_dim = 16 channels
    assert fc1[:start].abs().sum() == 0 and fc1[start + 128:].abs().sum() == 0  # inactive rows get no gradient
    assert fc1[start:start + 128].abs().sum() > 0


def test_shared_timestep():
    assert shared_timestep(torch.full((5,), 17)) == 17
    assert shared_timestep(torch.tensor([3])) == 3
    assert shared_timestep(torch.tensor([3, 3, 4])) is None


# --- beta 1 is vanilla, exactly -------------------------------------------------------------------

@pytest.mark.parametrize("site", UNIT_SITES)
def test_beta_one_equals_vanilla_exactly(site):
    full, vanilla = routed_dit(SlidingWindow(beta=1.0), site), routed_dit(Vanilla(), site)
    assert full.routing.is_dense and full.routing.num_tables == 0
    x, y = inputs()
    with torch.no_grad():
        for t in (torch.full((4,), 500), torch.tensor([0, 10, 500, 999])):
            assert torch.equal(full(x, t, y), vanilla(x, t, y))
            plain = randomized(DiT(**TINY)).eval()
            assert torch.equal(full(x, t, y), plain(x, t, y))


# --- the window over units is the paper's -----------------------------------------------------------

@pytest.mark.parametrize("units,alpha,beta", [(6, 4.0, 0.8), (4, 4.0, 0.8), (12, 1.0, 0.5), (1536, 4.0, 0.8)])
def test_window_over_units_is_the_papers(units, alpha, beta):
    """Task t of T activates n = floor(beta * U) contiguous units from round(((t / (T - 1)) ** alpha) * (U - n))."""
    plan = RoutingPlan(SlidingWindow(alpha=alpha, beta=beta), [units], T, site="heads")
    n = math.floor(beta * units)
    for t in (0, 1, 137, 500, 811, 998, 999):
        start = round(((t / (T - 1)) ** alpha) * (units - n))  # Python's round: half to even, as numpy's
        expected = torch.zeros(units, dtype=torch.bool)
        expected[start:start + n] = True
        assert torch.equal(plan.table(0)[t], expected)
        run = plan.active_units(t)[0]
        assert (run.start, run.stop, run.count, run.index) == (start, start + n, n, None)


def test_dit_units_per_site():
    model = DiT(**TINY)
    assert model.routed_channels() == model.routed_channels("input") == [64] * 3
    assert model.routed_channels("heads") == [4] * 3
    assert model.routed_channels("mlp") == [16] * 3            # 256 hidden channels in units of head_dim 16
    assert model.routed_channels("heads_mlp") == [4, 16] * 3
    odd = DiT(**{**TINY, "mlp_ratio": 1.1})                      # 70 hidden, head_dim 16 does not divide it
    assert odd.routed_channels("mlp") == [70] * 3
    plan = RoutingPlan(SlidingWindow(beta=0.8), model.routed_channels("heads_mlp"), T, site="heads_mlp")
    assert plan.num_tables == 2 and plan.layer_table == [0, 1] * 3  # one bool buffer per distinct table
    assert all(b.dtype == torch.bool for b in plan.buffers())


# --- checkpoints keep the official layout ---------------------------------------------------------

@pytest.mark.parametrize("site", UNIT_SITES)
def test_unit_sites_add_no_parameters(site):
    official = torch.load(FIXTURES / "dit_tiny_official.pt", weights_only=True)["state_dict"]
    model = routed_dit(SlidingWindow(beta=0.8), site)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in official.items()}
    model.load_state_dict(official)  # strict


# --- one YAML key -----------------------------------------------------------------------------------

def test_site_is_one_routing_key():
    cfg = load_config(CONFIGS / "dit_digits.yaml", ["routing.site=heads_mlp"])
    assert cfg.routing.site == "heads_mlp" and cfg.routing.params == {"alpha": 4.0, "beta": 0.8}
    assert cfg.to_dict()["routing"] == {"name": "dtr", "site": "heads_mlp", "alpha": 4.0, "beta": 0.8}
    model = build_model(cfg)
    assert model.routing.site == "heads_mlp" and len(model.routing.layer_table) == 2 * model.depth
    default = load_config(CONFIGS / "dit_digits.yaml")
    assert default.routing.site == "input" and build_model(default).routing.site == "input"
    again = config_from_dict(cfg.to_dict())  # the resolved config round-trips
    assert again.routing == cfg.routing


def test_unknown_site_is_one_config_error_line():
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "dit_digits.yaml", ["routing.site=tokens"])
    message = str(err.value)
    assert message == ("configs/dit_digits.yaml: routing.site: 'tokens' is not a routing site of backbone 'dit' "
                       "(allowed: input, heads, mlp, heads_mlp)").replace("configs/", str(CONFIGS) + "/")
    assert "\n" not in message


def test_adm_unet_declares_only_the_input_site():
    with pytest.raises(ConfigError, match=r"routing.site: 'heads' is not a routing site of backbone 'adm_unet' "
                                          r"\(allowed: input\)"):
        load_config(CONFIGS / "adm_digits.yaml", ["routing.site=heads"])  # from the factory's return type
    cfg = load_config(CONFIGS / "adm_digits.yaml")
    cfg.routing.site = "mlp"  # past config validation (a hand-made config): build_model still refuses
    with pytest.raises(ConfigError, match=r"\(allowed: input\)"):
        build_model(cfg)


def test_routing_sites_suite_compares_three_routings_over_five_seeds():
    from dtr_plugins.experiments.suite import load_suite

    suite = load_suite(CONFIGS / "suites" / "routing_sites_digits.yaml")
    groups = {r.group: r.config.routing for r in suite.runs}
    assert len(suite.runs) == 15 and len(groups) == 3 and {r.config.seed for r in suite.runs} == set(range(5))
    assert sorted((g.name, g.site, g.params.get("beta")) for g in groups.values()) == [
        ("dtr", "heads_mlp", 0.8), ("dtr", "input", 0.8), ("vanilla", "input", None)]
    assert {r.config.train.steps for r in suite.runs} == {600}  # the committed digits recipe (the demo's has 500)


@pytest.mark.parametrize("exact", [True, False])
def test_float_times_of_a_continuous_process_slice_at_their_own_masks(exact):
    """A batch sharing one float time (flow matching sampling) runs the units of that time's masks (closed
    form or nearest row), the same as the masked dense path; not the row of ``int(t)``."""
    from dtr_plugins.core.continuous_routing import ContinuousTasks

    window = SlidingWindow(alpha=1.0, beta=0.5)
    outs = []
    for slice_shared in (True, False):
        model = randomized(DiT(**TINY))
        model.attach_routing(RoutingPlan(window, model.routed_channels("heads_mlp"), T,
                                         ContinuousTasks(window, exact=exact), site="heads_mlp",
                                         slice_shared=slice_shared))
        units = model.eval().plan.shared_units(torch.tensor([0.3, 0.3]))
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            outs.append(model(x, torch.tensor([0.3, 0.3]), torch.tensor([0, 1])))
    assert units is not None and any(isinstance(u, ActiveUnits) and 0 < u.count < u.total for u in units)
    assert model.plan.shared_units(torch.tensor([0.3, 0.4])) is None
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
