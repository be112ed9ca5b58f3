"""RoutingPlan: one bool buffer per distinct table, one gather per table, no mask ops under vanilla."""
import pytest
import torch

from dtr_plugins.core.errors import PluginError
from dtr_plugins.core.routing import RoutingPlan, routed_residual
from dtr_plugins.strategies.dtr import SlidingWindow
from dtr_plugins.strategies.random import RandomRouting
from dtr_plugins.strategies.vanilla import Vanilla


def test_dtr_shares_one_table_per_width():
    plan = RoutingPlan(SlidingWindow(), [16, 16, 32, 16, 32], num_tasks=100)
    assert plan.num_tables == 2
    assert plan.layer_table == [0, 0, 1, 0, 1]
    buffers = dict(plan.named_buffers())
    assert all(b.dtype == torch.bool for b in buffers.values()) and len(buffers) == 2
    assert plan.state_dict() == {}  # tables follow from the config; checkpoints keep the official layout


def test_random_has_one_table_per_layer():
    plan = RoutingPlan(RandomRouting(beta=0.5, seed=0), [16] * 4, num_tasks=50)
    assert plan.num_tables == 4


def test_vanilla_has_no_tables_and_no_masks():
    plan = RoutingPlan(Vanilla(), [8, 8], num_tasks=10)
    assert plan.is_dense and plan.num_tables == 0
    assert plan.gather(torch.tensor([0, 9]), torch.float32) == [None, None]


def test_gather_rows_per_sample():
    plan = RoutingPlan(SlidingWindow(alpha=1.0, beta=0.5), [10, 10], num_tasks=5)
    t = torch.tensor([0, 4, 2])
    m0, m1 = plan.gather(t, torch.float32)
    assert m0 is m1  # gathered once for both layers
    assert m0.dtype == torch.float32 and m0.shape == (3, 10)
    assert torch.equal(m0.bool(), plan.table(0)[t])


def test_routed_residual():
    x = torch.randn(2, 3, 4)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])[:, None, :]
    branch = lambda u: 2 * u + 1  # noqa: E731
    assert torch.equal(routed_residual(x, None, branch), x + branch(x))
    out = routed_residual(x, mask, branch)
    assert torch.equal(out, x + branch(x * mask))


def test_bad_strategy_table_is_reported():
    class Broken:
        def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
            return torch.ones(num_tasks, channels)  # float, not bool

    with pytest.raises(PluginError, match="torch.bool"):
        RoutingPlan(Broken(), [4], num_tasks=3)

