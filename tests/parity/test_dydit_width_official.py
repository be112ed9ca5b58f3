"""``dydit_width`` against the official DyDiT code (dydit_width_official.pt, made by
tests/fixtures/make_dydit_width.py): router decisions in training (given Gumbel noise) and eval mode, the
FLOPs-target loss and its active rate, the straight-through gradients, and the FLOPs table. Then an official
dense DiT file (facebookresearch/DiT fixture) fine-tunes from: the router embedding is the file's
``t_embedder`` and, every unit on at ``bias_init`` 15, the model is the official DiT."""
from __future__ import annotations

import warnings

import pytest
import torch

import dtr_plugins.backbones.dit as dit_module
import dtr_plugins.strategies.dydit_width as dydit_module
from dtr_plugins.core.checkpoint import RouterInitWarning, load_checkpoint
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.strategies.dydit_width import DyDiTWidth, block_costs, width_loss, width_ratio

from ..conftest import FIXTURES

ATOL = 1e-6


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURES / "dydit_width_official.pt", weights_only=True)


def bound(ref) -> DyDiTWidth:
    hidden, heads, depth = (int(v) for v in ref["settings"][:3])
    strategy = DyDiTWidth(mlp_groups="dydit")
    strategy.bind([heads, 4 * heads] * depth, 1000, site="heads_mlp", cond_dim=hidden)
    with torch.no_grad():
        for b in range(depth):
            strategy.head_routers[b].weight.copy_(ref["attn_weight"][b])
            strategy.head_routers[b].bias.copy_(ref["attn_bias"][b])
            strategy.mlp_routers[b].weight.copy_(ref["mlp_weight"][b])
            strategy.mlp_routers[b].bias.copy_(ref["mlp_bias"][b])
    return strategy


def test_the_fixture_is_from_the_official_commit(ref):
    words = [int(w) for w in ref["dydit_commit"]]
    assert "".join(f"{w:08x}" for w in words) == "0ddc5097d2bc38c9b68b6c32ac6b53adadc1f865"


def test_block_costs_reproduce_the_official_flops_table(ref):
    for (hidden, row) in zip((384, 768, 1152), ref["flops"]):
        attn, mlp = block_costs(256, hidden, 4 * hidden)
        assert attn == pytest.approx(float(row[0]) * 1e9, rel=1e-12)
        assert mlp == pytest.approx(float(row[1]) * 1e9, rel=1e-12)


def test_decisions_loss_and_straight_through_gradients_match_the_official_code(ref):
    strategy = bound(ref)
    hidden, heads, depth, _, tokens = (int(v) for v in ref["settings"])
    target, ratio_weight = (float(v) for v in ref["target_loss_ratio"])
    emb = ref["emb"].clone().requires_grad_(True)
    attn = torch.stack([strategy.decisions(2 * b, emb, ref["attn_noise"][b]) for b in range(depth)], dim=1)
    mlp = torch.stack([strategy.decisions(2 * b + 1, emb, ref["mlp_noise"][b]) for b in range(depth)], dim=1)
    assert torch.equal(attn.detach(), ref["attn_masks"]) and torch.equal(mlp.detach(), ref["mlp_masks"])
    assert 0 < float(attn.detach().mean()) < 1 and 0 < float(mlp.detach().mean()) < 1  # the fixture decides both ways
    ratio = width_ratio(attn, mlp, *block_costs(tokens, hidden, 4 * hidden))
    loss = width_loss(ratio, target, ratio_weight)
    torch.testing.assert_close(ratio.mean().detach(), ref["rate"], atol=ATOL, rtol=0)
    torch.testing.assert_close(loss.detach(), ref["loss"], atol=ATOL, rtol=0)
    (loss + (attn * ref["down_attn"]).sum() + (mlp * ref["down_mlp"]).sum()).backward()
    torch.testing.assert_close(emb.grad, ref["grad_emb"], atol=ATOL, rtol=1e-5)
    for b in range(depth):
        for ours, name in ((strategy.head_routers[b], "attn"), (strategy.mlp_routers[b], "mlp")):
            torch.testing.assert_close(ours.weight.grad, ref[f"grad_{name}_weight"][b], atol=ATOL, rtol=1e-5)
            torch.testing.assert_close(ours.bias.grad, ref[f"grad_{name}_bias"][b], atol=ATOL, rtol=1e-5)


def test_eval_decisions_match_the_official_code_and_expand_to_dydit_groups(ref):
    strategy = bound(ref)
    depth = int(ref["settings"][2])
    with torch.no_grad():
        for b in range(depth):
            assert torch.equal(strategy.decisions(2 * b, ref["emb"], None), ref["eval_attn_masks"][:, b])
            mlp = strategy.decisions(2 * b + 1, ref["emb"], None)
            assert torch.equal(mlp, ref["eval_mlp_masks"][:, b])
            # a DyDiT group of mlp_ratio * head_dim channels is mlp_ratio consecutive heads_mlp units
            assert torch.equal(strategy.expand(2 * b + 1, mlp), mlp.repeat_interleave(4, dim=1))


def test_an_official_dense_dit_file_fine_tunes_from_its_t_embedder(tmp_path):
    official = torch.load(FIXTURES / "dit_tiny_official.pt", weights_only=True)
    path = tmp_path / "official_dit.pt"
    torch.save(official, path)
    registry = build_registry(entry_points=False, modules=[dit_module, dydit_module])
    model = registry.build("backbone", "dit", **official["config"])
    strategy = registry.build("strategy", "dydit_width")
    model.attach_routing(RoutingPlan(strategy, model.routed_channels("heads_mlp"), 1000, site="heads_mlp",
                                     cond_dim=model.routing_cond_dim()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(model, path)
    assert any(issubclass(w.category, RouterInitWarning) and "copy of t_embedder" in str(w.message) for w in caught)
    for ours, theirs in (("embed_in", "t_embedder.mlp.0"), ("embed_out", "t_embedder.mlp.2")):
        assert torch.equal(getattr(strategy, ours).weight, official["state_dict"][f"{theirs}.weight"])
    model.eval()
    with torch.no_grad():
        assert all(bool(t.all()) for t in strategy.task_tables(1000))  # bias 15: every unit on
        out = model(official["x"], official["t"], official["y"])
    torch.testing.assert_close(out, official["out"], atol=1e-5, rtol=1e-5)
