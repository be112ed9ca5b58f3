"""Learned-routing plan behaviour (contract v2) that mutation testing (``make mutate``) found untested: the
gate layout, exported tables and their refusals, conditioning, and the one-line errors. See docs/testing.md."""
import pytest
import torch

from dtr_plugins.core.errors import PluginError
from dtr_plugins.core.routing import RoutingPlan, gate_like

from ..learned_strategies import TaskGate, TokenGate


def test_gate_like_layouts_dtype_and_refusal():
    rows = torch.tensor([[0.5, 1.0]])
    tokens = gate_like(rows, torch.zeros(1, 3, 2, dtype=torch.float64))
    assert tokens.shape == (1, 1, 2) and tokens.dtype == torch.float64
    assert gate_like(rows, torch.zeros(1, 2, 4, 4, dtype=torch.bfloat16)).shape == (1, 2, 1, 1)
    with pytest.raises(ValueError) as info:
        gate_like(rows, torch.zeros(1, 2))
    assert str(info.value) == "gate_like: block input of shape (1, 2) is neither tokens [N, L, C] nor maps [N, C, H, W]"


def test_static_plan_refuses_learned_calls():
    plan = RoutingPlan(TaskGateless(), [2], num_tasks=3)
    assert plan.export_tables() is False and plan.pop_aux_losses() == {}
    with pytest.raises(ValueError) as info:
        plan.layer_gate(0, torch.zeros(1, 1, 2), torch.tensor([0]), None)
    assert str(info.value) == "this routing plan has no learned strategy"


class TaskGateless:
    def __repr__(self):
        return "static"

    def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
        return torch.ones(num_tasks, channels, dtype=torch.bool)


def test_learned_plan_exports_tables_and_clears_them():
    gate = TaskGate()
    plan = RoutingPlan(gate, [2, 3], num_tasks=4)
    assert plan.extra_repr() == ("strategy=task_gate(init=2.0, weight=0.0), site=input, tasks=4, layers=2, tables=0, "
                                 "learned")
    x, t = torch.zeros(2, 5, 3), torch.tensor([1, 3])
    live = plan.layer_gate(1, x, t, None)
    assert plan.export_tables() is True
    torch.testing.assert_close(plan.layer_gate(1, x, t, None), live)
    with torch.no_grad():
        gate.logits[1].add_(1.0)  # the module changes; the exported tables do not
    torch.testing.assert_close(plan.layer_gate(1, x, t, None), live)
    plan.clear_exported()
    assert not torch.allclose(plan.layer_gate(1, x, t, None), live)
    with pytest.raises(ValueError) as info:
        plan.gather(t, torch.float32)
    assert str(info.value) == "a learned routing plan has no mask rows: blocks ask layer_gate() for their gates"
    with pytest.raises(ValueError) as info:
        plan.tasks_of(torch.tensor([0.5]))
    assert str(info.value) == "float times given to a routing plan built for timestep indices"


def test_token_gates_are_not_exported():
    plan = RoutingPlan(TokenGate(), [2], num_tasks=4)
    assert plan.export_tables() is False
    x = torch.randn(1, 3, 2)
    torch.testing.assert_close(plan.layer_gate(0, x, torch.tensor([1]), None),
                               plan.learned.layer_gate(0, x, torch.tensor([1]), None))


class Bad(TaskGate):
    def __init__(self, tables=None, aux=None):
        super().__init__()
        self.tables, self.aux, self.cond_seen = tables, aux, []

    def task_tables(self, num_tasks):
        return self.tables(self) if self.tables else super().task_tables(num_tasks)

    def layer_gate(self, layer, x, tasks, cond):
        self.cond_seen.append(cond)
        return super().layer_gate(layer, x, tasks, cond)

    def pop_aux_losses(self):
        return self.aux if self.aux is not None else super().pop_aux_losses()


@pytest.mark.parametrize("tables", [
    lambda s: [torch.zeros(4, 2)],  # one table for two layers
    lambda s: [torch.zeros(4, 2), torch.zeros(4, 3, dtype=torch.long)],  # not float
    lambda s: [torch.zeros(4, 2), torch.zeros(4, 4)],  # wrong width
    lambda s: [torch.zeros(4, 2), [[0.0] * 3] * 4],  # not a tensor
])
def test_bad_task_tables_are_one_plugin_error(tables):
    plan = RoutingPlan(Bad(tables=tables), [2, 3], num_tasks=4)
    with pytest.raises(PluginError) as info:
        plan.export_tables()
    assert str(info.value) == ("strategy task_gate(init=2.0, weight=0.0): task_tables must return one float tensor "
                               "[4, C] per routed layer (C = [2, 3])")


def test_conditioning_reaches_the_strategy_and_aux_losses_are_checked():
    bad = Bad(aux={"x": torch.ones(2)})
    plan = RoutingPlan(bad, [2], num_tasks=4)
    cond = torch.ones(1, 5)
    plan.layer_gate(0, torch.zeros(1, 3, 2), torch.tensor([2]), cond)
    assert bad.cond_seen[0] is cond
    with pytest.raises(PluginError) as info:
        plan.pop_aux_losses()
    assert str(info.value) == ("strategy task_gate(init=2.0, weight=0.0): pop_aux_losses must return "
                               "{name: scalar tensor}, got 'x': Tensor (2,)")
    bad.aux = {"y": 0.5}
    with pytest.raises(PluginError) as info:
        plan.pop_aux_losses()
    assert str(info.value).endswith("got 'y': float ()")


class Recording(TaskGate):
    def __init__(self):
        super().__init__()
        self.calls = []

    def bind(self, layer_units, num_tasks, *, site, cond_dim):
        self.calls.append(("bind", site, cond_dim))
        super().bind(layer_units, num_tasks, site=site, cond_dim=cond_dim)

    def task_tables(self, num_tasks):
        self.calls.append(("task_tables", num_tasks))
        return super().task_tables(num_tasks)


class Levels:
    """A continuous process whose noise levels run past [0, 1] (clamped by the plan)."""

    def noise_level(self, t):
        return t * 2 - 0.5


def test_learned_strategy_sees_the_site_width_and_task_count():
    gate = Recording()
    plan = RoutingPlan(gate, [2], num_tasks=4, cond_dim=7)
    plan.export_tables()
    assert gate.calls == [("bind", "input", 7), ("task_tables", 4)]
    static = RoutingPlan(TaskGateless(), [2], num_tasks=3)
    assert static.extra_repr() == "strategy=static, site=input, tasks=3, layers=1, tables=0"


def test_exported_tables_read_the_nearest_clamped_row_for_float_times():
    gate = TaskGate()
    plan = RoutingPlan(gate, [2], num_tasks=4, continuous=Levels())
    plan.export_tables()
    x = torch.zeros(2, 1, 2)
    got = plan.layer_gate(0, x, torch.tensor([-1.0, 2.0]), None)  # levels -2.5 and 3.5
    expect = torch.sigmoid(gate.logits[0].detach())[[0, 3]][:, None, :]
    torch.testing.assert_close(got, expect)
