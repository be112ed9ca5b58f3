"""Heatmaps of learned gates (experiments/gate_plots.py): layout of the matrix, what a plan reports, the file."""
import pytest
import torch

from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.experiments.gate_plots import gate_matrix, learned_gate_tables, plot_gate_tables, plot_learned_gates
from dtr_plugins.strategies.dtr import SlidingWindow
from dtr_plugins.strategies.switch import SwitchRouting

from ..learned_strategies import TaskGate, TokenGate


def test_gate_matrix_puts_layers_side_by_side():
    a, b = torch.tensor([[0.1, 0.9], [0.5, 0.5]]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    matrix, offsets = gate_matrix([a, b])
    assert offsets == [0, 2, 5]
    assert matrix.shape == (2, 5) and matrix[1, 4] == 1.0 and matrix[0, 1] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="one T"):
        gate_matrix([a, torch.zeros(3, 2)])


def test_what_each_plan_reports_and_the_file(tmp_path):
    switch = RoutingPlan(SwitchRouting(embed_dim=8), [4, 4], 20)
    tables, unit, value = learned_gate_tables(switch)
    assert unit == "expert" and [tuple(t.shape) for t in tables] == [(20, 3), (20, 3)]
    torch.testing.assert_close(torch.stack(tables, 1), switch.learned.probabilities(torch.arange(20)))
    task = RoutingPlan(TaskGate(), [4, 4], 20)
    tables, unit, _ = learned_gate_tables(task)
    assert unit == "channel" and torch.equal(tables[1], torch.sigmoid(task.learned.logits[1]).detach())
    assert learned_gate_tables(RoutingPlan(TokenGate(), [4, 4], 20)) is None  # gates depend on the input only
    assert learned_gate_tables(RoutingPlan(SlidingWindow(), [4, 4], 20)) is None  # static: the mask heatmaps
    out = plot_learned_gates(switch, tmp_path / "gates.png", title="t")
    assert out is not None and out.stat().st_size > 1000
    out = plot_gate_tables([torch.randn(20, 4) * 3], tmp_path / "signed.png")  # values outside [0, 1]
    assert out.exists()
