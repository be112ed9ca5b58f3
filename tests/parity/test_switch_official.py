"""``switch`` against official code. (1) Official DiT weights (facebookresearch/DiT fixture) in a ``switch`` model:
the router is reported as left at its initialisation, and there (experts at zero, ``g == 1``) the model is the
official DiT. (2) The official Switch-DiT code itself (switch_dit_tiny_official.pt) on non-trivial weights: output,
prior loss, expert-to-window matching and router gradients, and its checkpoint layout."""
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


# ------------------------------------------------------------------ the official Switch-DiT code itself
# switch_dit_tiny_official.pt: made by tests/fixtures/make_switch_fixture.py from byeongjun-park/Switch-DiT
# (see tests/fixtures/README.md): random non-zero weights everywhere, routers and experts included.
FORWARD_ATOL = 1e-5  # fp32; measured max |ours - official| 9.5e-7 on outputs up to 4.6 (timm vs our attention)
GRAD_ATOL = 2e-8  # measured at most 1.5e-9 on gradients of 1e-4 to 1e-2


@pytest.fixture(scope="module")
def switch_official():
    return torch.load(FIXTURES / "switch_dit_tiny_official.pt", weights_only=True)


def official_switch_model(fixture):
    """Our ``dit`` + ``switch`` with the official weights, through the official-layout adapter."""
    registry = build_registry(entry_points=False, modules=[dit_module, switch_module])
    model = registry.build("backbone", "dit", **fixture["config"])
    strategy = registry.build("strategy", "switch", num_experts=fixture["num_experts"], top_k=fixture["top_k"],
                              jsd_weight=fixture["w_jsd"])
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(), fixture["num_tasks"],
                                     cond_dim=model.routing_cond_dim()))
    model.load_state_dict(switch_module.from_official_state_dict(fixture["state_dict"]), strict=True)
    return model, strategy


def test_official_switch_weights_load_and_give_the_official_output(switch_official):
    f = switch_official
    model, strategy = official_switch_model(f)
    assert torch.equal(strategy.window, f["window"].float())  # the prior's window: create_mask_tasks
    gates = [strategy.layer_gate(i, torch.randn(2, 16, 16), f["t"][:2]) for i in range(3)]
    assert all(not torch.allclose(g, torch.ones_like(g), atol=0.1) for g in gates)  # non-trivial routing
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations: a bf16 gate
        x16 = torch.randn(2, 16, 16).bfloat16()
        half = strategy.layer_gate(0, x16, f["t"][:2])
    assert half.dtype == torch.bfloat16
    with torch.no_grad():
        full = strategy.layer_gate(0, x16.float(), f["t"][:2])
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.05)
    with torch.no_grad():
        out = model.eval()(f["x"], f["t"], f["y"])
    torch.testing.assert_close(out, f["out"], atol=FORWARD_ATOL, rtol=0)
    probs = strategy.probabilities(torch.arange(f["num_tasks"])).detach()
    assert torch.equal(switch_module.top_k_selection(probs, 2).flatten(1), f["selected"].float())


def test_official_switch_prior_loss_matching_and_router_gradients(switch_official):
    f = switch_official
    model, strategy = official_switch_model(f)
    model.train()
    model.y_embedder.dropout_prob = 0.0  # as the fixture's training forwards
    out = model(f["x"], f["t"], f["y"])
    prior = model.plan.pop_aux_losses()[switch_module.AUX_LOSS]
    # the assignment the forward made is an optimal one for the official top-k table (the fixture's weights
    # have no tie that changes the loss; its script checks that over 10 tie-breaking seeds)
    selected, window = f["selected"].double(), f["window"].double()
    cost = (selected - window[:, strategy.matching]).abs().sum()
    assert float(cost) == float(f["matching_cost"])
    torch.testing.assert_close(prior, f["prior_loss"], atol=1e-7, rtol=0)

    names = {  # official name -> our parameter
        **{f"routers.{i}.{theirs}": f"routing.learned.layers.{i}.{ours}" for i in range(3) for theirs, ours in
           (("f_gate.1.weight", "router.weight"), ("f_gate.1.bias", "router.bias"),
            ("experts.w", "expert_weight"), ("experts.b", "expert_bias"))},
        **{f"t_embedder.mlp.{j}.{p}": f"routing.learned.embed_{io}.{p}" for j, io in ((0, "in"), (2, "out"))
           for p in ("weight", "bias")},
    }
    params = dict(model.named_parameters())
    ours = [params[n] for n in names.values()]
    backbone_t = [params[n] for n in names if n.startswith("t_embedder.")]
    grad_prior = dict(zip(names, torch.autograd.grad(prior, ours, retain_graph=True, allow_unused=True)))
    grads = torch.autograd.grad((out * f["out_weight"]).mean(), ours + backbone_t)
    grad_out = dict(zip(names, grads))
    # upstream's timestep embedder feeds both c and the routers; ours are two copies: their gradients add up
    for name, extra in zip([n for n in names if n.startswith("t_embedder.")], grads[len(ours):]):
        grad_out[name] = grad_out[name] + extra
    assert any(float(f["grad_prior"][n].abs().max()) > 1e-4 for n in names)  # the prior does train the routers
    for name in names:
        want_prior = f["grad_prior"][name]
        got_prior = grad_prior[name] if grad_prior[name] is not None else torch.zeros_like(want_prior)
        torch.testing.assert_close(got_prior, want_prior, atol=GRAD_ATOL, rtol=1e-5, msg=f"prior grad {name}")
        torch.testing.assert_close(grad_out[name], f["grad_out"][name], atol=GRAD_ATOL, rtol=1e-5,
                                   msg=f"output grad {name}")


def test_official_adapter_refuses_other_state_dicts(switch_official):
    assert switch_module.is_official_switch_state_dict(switch_official["state_dict"])
    plain = {k: v for k, v in switch_official["state_dict"].items() if not k.startswith("routers.")}
    assert not switch_module.is_official_switch_state_dict(plain)
    with pytest.raises(ValueError) as err:
        switch_module.from_official_state_dict(plain)
    assert str(err.value) == "not an official Switch-DiT state dict: no routers.N.f_gate / routers.N.experts keys"
    no_embedder = {k: v for k, v in switch_official["state_dict"].items() if k != "t_embedder.mlp.2.bias"}
    with pytest.raises(ValueError) as err:
        switch_module.from_official_state_dict(no_embedder)
    assert str(err.value) == "official Switch-DiT state dict without t_embedder.mlp.2.bias"
    ours = switch_module.from_official_state_dict(switch_official["state_dict"])
    forwards = ours[f"{switch_module.PREFIX}forwards"]
    assert forwards.dtype == torch.int64 and forwards.shape == () and int(forwards) == 0


def test_official_switch_checkpoints_load_through_load_checkpoint(switch_official, tmp_path):
    f = switch_official
    reference, _ = official_switch_model(f)
    for name, payload in (("bare.pt", f["state_dict"]),  # a state dict, and a training checkpoint's layout
                          ("train.pt", {"model": f["state_dict"], "ema": f["state_dict"], "opt": {}})):
        torch.save({f"module.{k}": v for k, v in payload.items()} if name == "bare.pt" else payload,
                   tmp_path / name)
        torch.manual_seed(1)
        model, _ = official_switch_model(f)
        with torch.no_grad():  # so the loaded values, not the ones the builder set, are compared
            for p in model.parameters():
                p.normal_()
        meta = load_checkpoint(model, tmp_path / name)
        assert "initialised_keys" not in meta
        state, want = model.state_dict(), reference.state_dict()
        assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
