"""Official DiT weights (facebookresearch/DiT fixture) in a ``switch`` model: the router is reported as left
at its initialisation, and at that initialisation (experts at zero, ``g == 1``) the model is the official DiT."""
from __future__ import annotations

import pytest
import torch

import dtr_plugins.backbones.dit as dit_module
import dtr_plugins.strategies.switch as switch_module
import dtr_plugins.strategies.vanilla as vanilla_module
from dtr_plugins.core.checkpoint import RouterInitWarning, load_checkpoint
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.core.routing import RoutingPlan

from ..conftest import FIXTURES

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10)


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "dit_tiny_official.pt", weights_only=True)


def build(strategy: str, **params):
    registry = build_registry(entry_points=False, modules=[dit_module, switch_module, vanilla_module])
    model = registry.build("backbone", "dit", **TINY)
    model.attach_routing(RoutingPlan(registry.build("strategy", strategy, **params), model.routed_channels(), 1000,
                                     cond_dim=model.routing_cond_dim()))
    return model


def test_official_dit_file_loads_into_switch_and_reproduces_the_official_output(official, tmp_path):
    assert official["config"] == TINY
    path = tmp_path / "official_dit.pt"
    torch.save(official, path)  # as published: {"config", "state_dict", ...}
    torch.manual_seed(0)
    model = build("switch", num_experts=3, top_k=2)
    router_init = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("routing.learned.")}
    with pytest.warns(RouterInitWarning, match="keep their initialisation"):
        meta = load_checkpoint(model, path)
    assert sorted(meta["initialised_keys"]) == sorted(router_init)
    assert {"routing.learned.layers.2.expert_weight", "routing.learned.layers.0.router.weight",
            "routing.learned.embed_in.weight", "routing.learned.matching"} <= set(meta["initialised_keys"])
    assert len([k for k in router_init if k.endswith("expert_weight")]) == TINY["depth"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in router_init.items())
    assert all(torch.equal(state[k], v) for k, v in official["state_dict"].items())
    plain = build("vanilla")
    plain.load_state_dict(official["state_dict"])
    with torch.no_grad():
        out = model.eval()(official["x"], official["t"], official["y"])
        assert torch.equal(out, plain.eval()(official["x"], official["t"], official["y"]))
    torch.testing.assert_close(out, official["out"], atol=1e-4, rtol=0)  # the tolerance of parity/test_dit.py
