"""The ``dit`` backbone: parity with the official DiT and DTR code, routing semantics, parameters."""
from __future__ import annotations

import warnings

import pytest
import torch

import dtr_plugins.backbones.dit as dit_module
import dtr_plugins.strategies.dtr as dtr_module
import dtr_plugins.strategies.vanilla as vanilla_module
from dtr_plugins.backbones.dit import DIT_SIZES, DiT, DiTParams
from dtr_plugins.core.checkpoint import RoutingMismatchWarning, load_checkpoint
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.core.routing import RoutingPlan

from ..conftest import FIXTURES

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10)
T = 1000


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "dit_tiny_official.pt", weights_only=True)


@pytest.fixture(scope="module")
def official_dtr():
    return torch.load(FIXTURES / "dtr_dit_tiny_official.pt", weights_only=True)


@pytest.fixture(scope="module")
def registry():
    return build_registry(entry_points=False, modules=[dit_module, dtr_module, vanilla_module])


def routed(model: DiT, strategy) -> DiT:
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(), T))
    return model


def build(registry, strategy: str, weights=None, **strategy_params) -> DiT:
    model = registry.build("backbone", "dit", **TINY)
    routed(model, registry.build("strategy", strategy, **strategy_params))
    if weights is not None:
        model.load_state_dict(weights)
    return model.eval()


def forward_with_cfg(model, x, t, y, scale, guided_channels=3):
    """DiT's sampling-time CFG: the first half of the batch is conditional, the second half unconditional."""
    half = x[: len(x) // 2]
    out = model(torch.cat([half, half]), t, y)
    eps, rest = out[:, :guided_channels], out[:, guided_channels:]
    cond, uncond = eps.chunk(2)
    guided = uncond + scale * (cond - uncond)
    return torch.cat([torch.cat([guided, guided]), rest], dim=1)


# --- parity with the official implementations ---------------------------------------------------

def test_state_dict_keys_match_official(official):
    model = DiT(**TINY)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in official["state_dict"].items()}
    assert ours == theirs


def test_official_dit_output(registry, official):
    assert official["config"] == TINY
    model = build(registry, "vanilla", official["state_dict"])
    with torch.no_grad():
        out = model(official["x"], official["t"], official["y"])
    torch.testing.assert_close(out, official["out"], atol=1e-4, rtol=0)


def test_official_dit_cfg_first3(registry, official):
    model = build(registry, "vanilla", official["state_dict"])
    x, t = official["x"], official["t"]
    # The fixture guided the first three samples with labels 1, 2, 3 against the null class 10
    # (established by matching each output row; its README only says "the first three samples").
    y = torch.tensor([1, 2, 3] + [model.null_class] * 3)
    with torch.no_grad():
        out = forward_with_cfg(model, torch.cat([x[:3], x[:3]]), torch.cat([t[:3], t[:3]]), y,
                               official["cfg_scale"])
    torch.testing.assert_close(out, official["cfg_out_first3"], atol=1e-4, rtol=0)


def test_official_dtr_output_via_load_checkpoint(registry, official_dtr, tmp_path):
    cfg = official_dtr["config"]
    assert (cfg["routing"], cfg["alpha"], cfg["beta"], cfg["num_tasks"]) == ("dtr", 4.0, 0.8, T)
    model = build(registry, "dtr", alpha=4.0, beta=0.8)
    path = tmp_path / "dtr.pt"
    torch.save(official_dtr["state_dict"], path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RoutingMismatchWarning)  # our dtr table is the one DTR stored
        load_checkpoint(model, path)
    with torch.no_grad():
        out = model(official_dtr["x"], official_dtr["t"], official_dtr["y"])
    torch.testing.assert_close(out, official_dtr["out"], atol=1e-4, rtol=0)


def test_official_dtr_into_vanilla_model_warns(registry, official_dtr, tmp_path):
    model = build(registry, "vanilla")
    path = tmp_path / "dtr.pt"
    torch.save(official_dtr["state_dict"], path)
    with pytest.warns(RoutingMismatchWarning, match=r"_unit_mapping.*vanilla.*3 of 3 layers"):
        load_checkpoint(model, path)


def test_init_matches_official_layout(official):
    model = DiT(**TINY)
    assert torch.equal(model.pos_embed, official["state_dict"]["pos_embed"])
    assert not model.pos_embed.requires_grad
    for block in model.blocks:
        assert not block.adaLN_modulation[-1].weight.any() and not block.adaLN_modulation[-1].bias.any()
    assert not model.final_layer.linear.weight.any() and not model.final_layer.adaLN_modulation[-1].weight.any()
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([0, 999]), torch.tensor([1, 2]))
    assert out.shape == (2, 8, 8, 8) and not out.any()  # adaLN-Zero: the untrained model predicts zeros


# --- routing semantics ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 4, 8, 8, generator=g), torch.tensor([0, 300, 700, 999]), torch.tensor([1, 2, 3, 10])


def test_vanilla_is_the_plain_model_bit_exactly(registry, official, inputs):
    plain = DiT(**TINY).eval()
    plain.load_state_dict(official["state_dict"])
    vanilla = build(registry, "vanilla", official["state_dict"])
    assert vanilla.plan.is_dense
    with torch.no_grad():
        assert torch.equal(plain(*inputs), vanilla(*inputs))


def test_dtr_beta_one_equals_vanilla(registry, official, inputs):
    vanilla = build(registry, "vanilla", official["state_dict"])
    full = build(registry, "dtr", official["state_dict"], alpha=4.0, beta=1.0)
    assert full.plan.is_dense
    with torch.no_grad():
        assert torch.equal(vanilla(*inputs), full(*inputs))


def test_dtr_changes_the_output(registry, official, inputs):
    vanilla = build(registry, "vanilla", official["state_dict"])
    dtr = build(registry, "dtr", official["state_dict"])
    with torch.no_grad():
        assert not torch.allclose(vanilla(*inputs), dtr(*inputs), atol=1e-3)


def test_masks_are_applied_per_sample(registry, official, inputs):
    model = build(registry, "dtr", official["state_dict"])
    x, t, y = inputs
    with torch.no_grad():
        batched = model(x[:2], t[:2], y[:2])
        single = torch.cat([model(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_routed_block_is_published_dtr_block(official):
    """x + F(m * x) equals DTR's u = m*x; h = u + attn; h = h + mlp; out = x * (1 - m) + h."""
    model = DiT(**TINY)
    model.load_state_dict(official["state_dict"])
    block = model.blocks[0]
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(2, 16, 64, generator=g), torch.randn(2, 64, generator=g)
    mask = (torch.rand(2, 1, 64, generator=g) > 0.3).float()
    shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)
    u = x * mask
    h = u + gate1 * block.attn(block.norm1(u) * (1 + scale1) + shift1)
    h = h + gate2 * block.mlp(block.norm2(h) * (1 + scale2) + shift2)
    with torch.no_grad():
        torch.testing.assert_close(block(x, c, mask), x * (1 - mask) + h, atol=1e-5, rtol=0)


def test_dtr_uses_one_table_for_all_blocks(registry):
    model = build(registry, "dtr")
    assert model.plan.num_tables == 1
    assert model.plan.layer_table == [0, 0, 0]
    assert model.plan.table(0).shape == (T, 64) and model.plan.table(0).dtype == torch.bool


def test_forward_gathers_masks_once(registry, inputs, monkeypatch):
    model = build(registry, "dtr")
    calls = []
    original = model.plan.gather
    monkeypatch.setattr(model.plan, "gather", lambda t, dtype: calls.append(1) or original(t, dtype))
    with torch.no_grad():
        model(*inputs)
    assert len(calls) == 1


def test_gradients_flow(registry, official, inputs):
    model = build(registry, "dtr", official["state_dict"]).train()
    model(*inputs).square().mean().backward()
    for name, p in model.named_parameters():
        if name == "pos_embed":
            assert p.grad is None
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- labels and conditioning --------------------------------------------------------------------

def test_label_dropout_in_training_uses_null_class(official, inputs):
    x, t, _ = inputs
    model = DiT(**{**TINY, "class_dropout_prob": 1.0})
    model.load_state_dict(official["state_dict"])
    y = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        dropped = model.train()(x, t, y)
        null = model.eval()(x, t, torch.full((4,), model.null_class))
        no_labels = model(x, t)
    assert torch.equal(dropped, null) and torch.equal(null, no_labels)


def test_unconditional_model():
    model = DiT(**{**TINY, "num_classes": 1}).eval()
    assert model.null_class is None and model.class_dropout_prob == 0.0
    assert model.y_embedder.embedding_table.weight.shape == (1, 64)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 6])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, torch.zeros(2, dtype=torch.long)))


def test_conditional_without_null_class_needs_labels():
    model = DiT(**{**TINY, "class_dropout_prob": 0.0})
    with pytest.raises(ValueError, match="pass labels y"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([3]))


def test_attributes():
    model = DiT(**{**TINY, "learn_sigma": False})
    assert (model.in_channels, model.out_channels, model.learn_sigma, model.num_classes) == (4, 4, False, 10)
    assert model.routed_channels() == [64, 64, 64]
    assert model(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([0])).shape == (1, 4, 8, 8)


# --- parameters -----------------------------------------------------------------------------------

def test_size_presets():
    assert len(DIT_SIZES) == 12
    p = DiTParams(size="B/4", input_size=32)
    assert (p.depth, p.hidden_size, p.num_heads, p.patch_size) == (12, 768, 12, 4)
    p = DiTParams(size="XL/2", depth=28)  # agreeing explicit field
    assert (p.depth, p.hidden_size, p.num_heads, p.patch_size) == (28, 1152, 16, 2)
    assert DiTParams(size="DiT-S/8").size == "S/8"


@pytest.mark.parametrize("params, message", [
    ({"size": "M/2"}, r"backbone 'dit'\.size: unknown DiT size 'M/2' \(allowed: S/2, .*XL/8\)"),
    ({"size": "S/2", "hidden_size": 512}, r"hidden_size: 512 conflicts with size S/2, which sets hidden_size=384"),
    ({**TINY, "num_heads": 5}, r"num_heads: num_heads=5 must divide hidden_size=64"),
    ({**TINY, "input_size": 9}, r"input_size: input_size=9 must be divisible by patch_size=2"),
    ({"depth": 2, "num_heads": 2}, r"hidden_size: required unless a size preset is given"),
    ({**TINY, "heads": 4}, r"heads: unknown key \(allowed: .*num_heads"),
])
def test_params_errors(registry, params, message):
    with pytest.raises(ConfigError, match=message):
        registry.build("backbone", "dit", **params)


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match=r"dit\.num_heads: num_heads=3 must divide hidden_size=64"):
        DiT(**{**TINY, "num_heads": 3})
