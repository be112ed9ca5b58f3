"""Routing contract v2: learned strategies in the plan and in DiT (gates, gradients, tables, refusals)."""
from __future__ import annotations

import pytest
import torch

from dtr_plugins.backbones.dit import DiT
from dtr_plugins.core.contracts import LearnedRoutingStrategy, RoutingStrategy
from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.routing import RoutingPlan, gate_like, routed_residual
from dtr_plugins.strategies.dtr import SlidingWindow
from dtr_plugins.strategies.vanilla import Vanilla

from ..learned_strategies import TaskGate, TokenGate

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)
T = 50


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # DiT's zero init of adaLN would hide every routing effect
        for name, p in model.named_parameters():
            if not name.startswith("routing."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def learned_dit(strategy, seed: int = 0) -> DiT:
    model = DiT(**TINY)
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(), T, cond_dim=model.routing_cond_dim()))
    return randomized(model, seed)


def test_the_two_kinds_are_told_apart_by_protocol():
    assert isinstance(TaskGate(), LearnedRoutingStrategy) and not isinstance(TaskGate(), RoutingStrategy)
    for static in (Vanilla(), SlidingWindow()):
        assert isinstance(static, RoutingStrategy) and not isinstance(static, LearnedRoutingStrategy)


def test_static_plans_are_unchanged():
    plan = RoutingPlan(SlidingWindow(), [16, 16], num_tasks=T)
    assert not plan.is_learned and plan.learned is None and plan.state_dict() == {}
    assert plan.param_groups() == [] and plan.pop_aux_losses() == {}
    assert RoutingPlan(Vanilla(), [8], num_tasks=T).is_dense


def test_learned_plan_binds_and_owns_the_parameters():
    model = learned_dit(TaskGate())
    plan = model.plan
    assert plan.is_learned and not plan.is_dense
    keys = [k for k in model.state_dict() if k.startswith("routing.")]
    assert keys == ["routing.learned.logits.0", "routing.learned.logits.1"]
    assert model.state_dict()["routing.learned.logits.0"].shape == (T, TINY["hidden_size"])
    with pytest.raises(ValueError, match="layer_gate"):
        plan.gather(torch.tensor([0]), torch.float32)


def test_gate_is_applied_as_the_routed_residual():
    model = learned_dit(TaskGate()).eval()
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 17, 49]), torch.tensor([1, 2, 3])
    out = model(x, t, y)
    # by hand: every block x + F(g * x), g = sigmoid(logits[t]) as [N, 1, C]
    h = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y, False)
    for layer, block in enumerate(model.blocks):
        g = torch.sigmoid(model.plan.learned.logits[layer][t])[:, None, :]
        plain = lambda u, b=block: b(u, c) - u  # noqa: E731 -- F(u) = block(u) - u
        h = routed_residual(h, g, plain)
    ref = model.unpatchify(model.final_layer(h, c))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_router_parameters_get_gradients_and_aux_losses():
    model = learned_dit(TaskGate(weight=0.5)).train()
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([3, 4]), torch.tensor([0, 1]))
    aux = model.plan.pop_aux_losses()
    assert set(aux) == {"sparsity"} and aux["sparsity"].requires_grad
    (out.square().mean() + aux["sparsity"]).backward()
    grads = [p.grad for p in model.plan.learned.parameters()]
    assert all(g is not None and bool(g[3:5].abs().sum() > 0) and bool(g[5:].abs().sum() == 0) for g in grads)
    assert model.plan.pop_aux_losses() == {}  # popped
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.tensor([0]))
    assert model.plan.pop_aux_losses() == {}  # nothing collected outside training


def test_exported_tables_give_the_module_output():
    model = learned_dit(TaskGate()).eval()
    x, t, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 9, 9, 49]), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        ref = model(x, t, y)
        assert model.plan.export_tables()
        assert torch.equal(model(x, t, y), ref)
    model.plan.clear_exported()
    token = learned_dit(TokenGate())
    assert not token.plan.export_tables()  # gates depend on the tokens: the module keeps running


def test_token_gates_per_sample_and_token():
    model = learned_dit(TokenGate()).eval()
    h = torch.randn(2, 16, 32)
    g = model.plan.layer_gate(0, h, torch.tensor([1, 2]), None)
    assert g.shape == (2, 16, 32)
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert out.shape == (2, 8, 8, 8) and bool(torch.isfinite(out).all())


def test_gate_like_layouts():
    rows = torch.rand(2, 5)
    assert gate_like(rows, torch.zeros(2, 7, 5)).shape == (2, 1, 5)
    assert gate_like(rows, torch.zeros(2, 5, 3, 3)).shape == (2, 5, 1, 1)


def test_learned_strategy_refuses_other_sites_and_non_modules():
    with pytest.raises(ConfigError, match="routing.site: 'heads' is not supported by learned strategy"):
        RoutingPlan(TaskGate(), [4, 4], T, site="heads")

    class NotAModule:
        learned_routing = True

        def bind(self, layer_units, num_tasks, *, site, cond_dim): ...
        def layer_gate(self, layer, x, tasks, cond): ...
        def pop_aux_losses(self): ...
        def param_groups(self): ...
        def task_tables(self, num_tasks): ...

    with pytest.raises(PluginError, match="must be a torch.nn.Module"):
        RoutingPlan(NotAModule(), [4], T)


def test_param_groups_must_cover_the_strategy_parameters():
    class Partial(TaskGate):
        def param_groups(self):
            return [{"params": [self.logits[0]]}]

    plan = RoutingPlan(Partial(), [4, 4], T)
    with pytest.raises(PluginError, match="exactly once"):
        plan.param_groups()
