"""``tread`` against the official TREAD code (CompVis/tread ``fccf77c``; tread_dit_tiny_official.pt, made by
tests/fixtures/make_tread_fixture.py): a tiny DiT with random weights, one route (ratio 0.5 over blocks 1..2 of
4). With the official route indices our training forward gives the official routed output and input gradient;
our draw after the same seed gives the official indices; evaluation runs every token (the official output
without routing); and the same with DTR channel routing composed stays different only where DTR acts."""
from __future__ import annotations

from typing import Any

import pytest
import torch

import dtr_plugins.backbones.dit as dit_module
import dtr_plugins.strategies.dtr as dtr_module
import dtr_plugins.strategies.vanilla as vanilla_module
import dtr_plugins.token_routers.tread as tread_module
from dtr_plugins.core.contracts import TokenRouter, missing_members
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.core.routing import RoutingPlan

from ..conftest import FIXTURES

COMMIT = "fccf77cc735ae2850162e12e4ed360cbc9a13e68"


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "tread_dit_tiny_official.pt", weights_only=True)


class GivenIds:
    """A token router that hands out fixed indices (the official ones): the route is given, not drawn."""

    def __init__(self, ids: torch.Tensor, start: int, end: int):
        self.ids, self.start, self.end = ids, start, end

    def keep_count(self, tokens: int) -> int:
        return self.ids.shape[1]

    def select(self, n: int, tokens: int, device: Any = None) -> torch.Tensor:
        return self.ids

    def applied(self) -> dict[str, Any]:
        return {"name": "given"}


def model_of(official, strategy: str = "vanilla", **params):
    registry = build_registry(entry_points=False, modules=[dit_module, vanilla_module, dtr_module, tread_module])
    # class_dropout_prob > 0 gives the table its null row, as the official LabelEmbedder always has
    model = registry.build("backbone", "dit", **official["config"], class_dropout_prob=0.1)
    model.attach_routing(RoutingPlan(registry.build("strategy", strategy, **params), model.routed_channels(), 1000))
    model.load_state_dict(official["state_dict"])
    model.y_embedder.dropout_prob = 0.0  # the official forward drops no label (class_drop_prob 0)
    return model, registry


def test_fixture_is_from_the_official_commit(official):
    words = official["tread_commit"].tolist()
    assert "".join(f"{w:08x}" for w in words) == COMMIT


def test_routed_training_forward_and_gradient_match_the_official_code(official):
    model, _ = model_of(official)
    router = GivenIds(official["ids_keep"], int(official["start"]), int(official["end"]))
    assert missing_members(router, TokenRouter) == []
    model.attach_token_routing(router)
    x = official["x"].clone().requires_grad_(True)
    out = model.train()(x, official["t"], official["y"])
    torch.testing.assert_close(out, official["out_routed"], atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad((out * official["out_weight"]).sum(), x)
    torch.testing.assert_close(grad, official["grad_x"], atol=1e-5, rtol=0)
    assert (official["out_routed"] - official["out_full"]).abs().max() > 0.1  # the route changes the output


def test_tread_draws_the_official_indices_and_evaluation_runs_every_token(official):
    model, registry = model_of(official)
    tread = registry.build("token_router", "tread", ratio=float(official["selection_ratio"]),
                           start=int(official["start"]), end=int(official["end"]))
    model.attach_token_routing(tread)
    tokens = model.token_layout()[1]
    torch.manual_seed(int(official["route_seed"]))
    assert torch.equal(tread.select(4, tokens), official["ids_keep"])
    torch.manual_seed(int(official["route_seed"]))
    with torch.no_grad():
        out = model.train()(official["x"], official["t"], official["y"])
        torch.testing.assert_close(out, official["out_routed"], atol=1e-5, rtol=0)
        full = model.eval()(official["x"], official["t"], official["y"])
    torch.testing.assert_close(full, official["out_full"], atol=1e-5, rtol=0)


def test_dtr_composes_on_the_routed_tokens(official):
    """DTR + TREAD: the span's blocks see the kept tokens with their DTR masks. At beta 1 (every channel) it is
    the official routed output; at beta 0.5 it differs, and it equals the DTR model's output when the route
    keeps every token."""
    ids = official["ids_keep"]
    everything = torch.arange(ids.shape[1] * 2).expand(ids.shape[0], -1)
    outs = {}
    for beta, keep in ((1.0, ids), (0.5, ids), (0.5, everything)):
        model, _ = model_of(official, "dtr", alpha=4.0, beta=beta)
        model.attach_token_routing(GivenIds(keep, int(official["start"]), int(official["end"])))
        with torch.no_grad():
            outs[beta, keep.shape[1]] = model.train()(official["x"], official["t"], official["y"])
            if beta == 0.5:
                outs["dtr"] = model.eval()(official["x"], official["t"], official["y"])
    torch.testing.assert_close(outs[1.0, 8], official["out_routed"], atol=1e-5, rtol=0)
    assert (outs[0.5, 8] - official["out_routed"]).abs().max() > 1e-3
    torch.testing.assert_close(outs[0.5, 16], outs["dtr"], atol=1e-5, rtol=0)
