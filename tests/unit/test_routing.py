"""RoutingPlan: one bool buffer per distinct table, one gather per table, no mask ops under vanilla."""
import pytest
import torch

from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.routing import (
    ActiveUnits,
    RoutedBackbone,
    RoutingPlan,
    check_routing_site,
    routed_residual,
    shared_timestep,
)
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


# --- pinned by mutation testing (survivors of `make mutate`; see docs/testing.md) ---
# Routing-plan behaviour that mutation testing (``make mutate``) found untested: the sliced-execution
# helpers on edge cases (empty rows, dense layers, unit sizes, devices). See docs/testing.md.

class Rows:
    """A strategy with given rows for the even layers; odd layers are dense (all channels)."""

    def __init__(self, rows):
        self.rows = torch.tensor(rows, dtype=torch.bool)

    def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
        return self.rows.clone() if layer % 2 == 0 else torch.ones(num_tasks, channels, dtype=torch.bool)


ROWS = [[1, 1, 1, 1],   # t = 0: every unit
        [0, 0, 0, 0],   # t = 1: none
        [0, 1, 1, 0],   # t = 2: contiguous [1, 3)
        [1, 0, 0, 1]]   # t = 3: scattered


def test_active_units_edge_rows_and_dense_layers():
    plan = RoutingPlan(Rows(ROWS), [4, 4, 4], num_tasks=4)
    assert plan.layer_table == [0, None, 0] and plan.num_tables == 1
    assert plan.active_units(0) == [None, None, None]
    empty = plan.active_units(1)
    assert empty[1] is None and empty[0] == empty[2] == ActiveUnits(count=0, total=4)
    assert empty[0].take(torch.arange(8.0).view(4, 2), 0).shape == (0, 2)  # an empty row runs no unit
    assert plan.active_units(2)[0] == ActiveUnits(count=2, total=4, start=1, stop=3)
    scattered = plan.active_units(3)[2]
    assert (scattered.count, scattered.total, scattered.index.tolist()) == (2, 4, [0, 3])


def test_active_units_index_on_the_given_device_and_range_checked():
    plan = RoutingPlan(Rows(ROWS), [4], num_tasks=4)
    assert plan.active_units(3, device="meta")[0].index.device.type == "meta"
    for t in (4, -1):
        with pytest.raises(IndexError) as info:
            plan.active_units(t)
        assert str(info.value) == f"timestep {t} outside the plan's 4 tasks"


def test_take_unit_sizes_and_default():
    w = torch.arange(24.0).view(12, 2)  # 6 units of 2 rows, or 12 units of 1 row
    index = ActiveUnits(count=2, total=6, index=torch.tensor([1, 4]))
    assert index.take(w, 0, unit_size=2)[:, 0].tolist() == [4.0, 6.0, 16.0, 18.0]
    assert index.take(w, 0)[:, 0].tolist() == [2.0, 8.0]  # unit_size defaults to 1
    window = ActiveUnits(count=2, total=6, start=1, stop=3)
    assert window.take(w, 0)[:, 0].tolist() == [2.0, 4.0]
    assert window.take(w, 0, unit_size=2)[:, 0].tolist() == [4.0, 6.0, 8.0, 10.0]
    meta = ActiveUnits(count=2, total=6, index=torch.tensor([1, 4], device="meta"))
    assert meta.take(torch.empty(12, 2, device="meta"), 0, unit_size=2).shape == (4, 2)


def test_shared_timestep_two_elements():
    assert shared_timestep(torch.tensor([3, 5])) is None
    assert shared_timestep(torch.tensor([6, 6])) == 6
    assert shared_timestep(torch.tensor([[2]])) == 2


def test_bad_table_is_one_plugin_error_line():
    class Wrong:
        def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
            return torch.ones(num_tasks, channels + 1)

        def __repr__(self):
            return "wrong"

    with pytest.raises(PluginError) as info:
        RoutingPlan(Wrong(), [4], num_tasks=3)
    assert str(info.value) == ("strategy wrong: mask_table must return a torch.bool tensor of shape (3, 4), "
                               "got torch.float32 (3, 5)")


def test_gather_mixes_dense_and_routed_layers():
    plan = RoutingPlan(Rows(ROWS), [4, 4, 4], num_tasks=4)
    rows = plan.gather(torch.tensor([2, 3]), torch.float64)
    assert rows[1] is None and rows[0].dtype == torch.float64
    assert rows[0].tolist() == rows[2].tolist() == [[0, 1, 1, 0], [1, 0, 0, 1]]


def test_gather_float_times_need_a_continuous_plan():
    plan = RoutingPlan(Rows(ROWS), [4], num_tasks=4)
    with pytest.raises(ValueError) as info:
        plan.gather(torch.tensor([0.5]), torch.float32)
    assert str(info.value) == "float times given to a routing plan built for timestep indices"


def test_gather_float_times_in_the_requested_dtype():
    from dtr_plugins.core.continuous_routing import ContinuousTasks
    from dtr_plugins.strategies.dtr import SlidingWindow

    dtr = SlidingWindow()
    plan = RoutingPlan(dtr, [8], num_tasks=10, continuous=ContinuousTasks(dtr, exact=True))
    (rows,) = plan.gather(torch.tensor([0.0, 1.0]), torch.float64)
    assert rows.dtype == torch.float64 and rows.shape == (2, 8)


def test_plan_defaults_and_the_layer_count_given_to_strategies():
    seen = []

    class Recording(Rows):
        def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
            seen.append((layer, num_layers))
            return super().mask_table(num_tasks, channels, layer=layer, num_layers=num_layers)

    plan = RoutingPlan(Recording(ROWS), [4, 4, 4], num_tasks=4)
    assert seen == [(0, 3), (1, 3), (2, 3)]
    assert plan.slice_shared is True and plan.site == "input"


def test_table_that_is_not_a_tensor_is_named_by_its_type():
    class Listing:
        def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
            return [[True] * channels] * num_tasks

        def __repr__(self):
            return "listing"

    with pytest.raises(PluginError) as info:
        RoutingPlan(Listing(), [4], num_tasks=2)
    assert str(info.value) == ("strategy listing: mask_table must return a torch.bool tensor of shape (2, 4), "
                               "got list ()")


class Minimal(RoutedBackbone):
    def routed_channels(self, site="input"):
        return [4, 4]


def test_attach_and_site_errors_are_one_line():
    with pytest.raises(ValueError) as info:
        Minimal().attach_routing(RoutingPlan(Rows(ROWS), [4], num_tasks=4))
    assert str(info.value) == "routing plan was built for a different list of routed layers"
    with pytest.raises(ConfigError) as info:
        check_routing_site(Minimal, "heads")
    assert str(info.value) == "routing.site: 'heads' is not a routing site of backbone Minimal (allowed: input)"
    with pytest.raises(ConfigError) as info:
        check_routing_site(Minimal, "heads", "tiny")
    assert str(info.value) == "routing.site: 'heads' is not a routing site of backbone 'tiny' (allowed: input)"


def test_routing_data_flows_one_way_from_the_plan_to_continuous_tasks():
    """The plan asks ContinuousTasks for rows or closed-form masks; ContinuousTasks never calls back."""
    import ast
    import inspect

    from dtr_plugins.core import continuous_routing, routing

    tree = ast.parse(inspect.getsource(continuous_routing))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "dtr_plugins.core.routing" not in imported
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert "gather" not in calls and "gather" not in vars(continuous_routing.ContinuousTasks)
    plan_gather = ast.parse(inspect.getsource(routing.RoutingPlan.gather).replace("\n    ", "\n")[4:])
    called = {ast.unparse(n.func) for n in ast.walk(plan_gather) if isinstance(n, ast.Call)}
    assert "self.continuous.gather" not in called and "self.continuous.rows" in called


def test_continuous_tasks_map_times_to_rows_or_closed_forms():
    from dtr_plugins.core.continuous_routing import ContinuousTasks

    dtr = SlidingWindow()
    t = torch.tensor([1.0, 0.75, 0.1, 0.0])  # u = 0, 0.25, 0.9, 1
    grid = ContinuousTasks(dtr, exact=False)
    assert grid.rows(t, 10).tolist() == [0, 2, 8, 9]  # round(u * 9), half to even
    exact = ContinuousTasks(dtr, exact=True)
    assert exact.rows(t, 10) is None
    assert repr(grid) == "continuous(u=1-t, nearest row)"
    assert repr(ContinuousTasks(dtr, exact=True, data_at_one=False)) == "continuous(u=t, closed form)"
    u = exact.noise_level(t)
    assert torch.equal(exact.closed_form(u, 8, layer=0, num_layers=1), dtr.mask_for_u(u, 8))
    plan = RoutingPlan(dtr, [8, 8], num_tasks=10, continuous=exact)
    first, second = plan.gather(t, torch.float32)
    assert first is second and torch.equal(first, dtr.mask_for_u(u, 8).float())
    grid_plan = RoutingPlan(dtr, [8], num_tasks=10, continuous=grid)
    assert torch.equal(grid_plan.gather(t, torch.float32)[0], grid_plan.gather(grid.rows(t, 10), torch.float32)[0])
