"""Mask math of the four built-in strategies (docs/design.md, "1. Routing"), against hand-computed tables."""
import numpy as np
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.strategies.dtr import SlidingWindow, window_starts
from dtr_plugins.strategies.random import RandomRouting
from dtr_plugins.strategies.task_specific_sharing import TaskSpecificSharing
from dtr_plugins.strategies.vanilla import Vanilla
from dtr_plugins.weighting.ant_uw import AntUW
from dtr_plugins.weighting.min_snr import MinSNR
from dtr_plugins.weighting.p2 import P2


def rows(table):
    return ["".join("1" if v else "." for v in row) for row in table.tolist()]


def test_dtr_golden_rows_half_to_even():
    # n = 5, C - n = 5, starts = round([0, 1.25, 2.5, 3.75, 5]) = [0, 1, 2, 4, 5] (2.5 rounds to 2)
    table = SlidingWindow(alpha=1.0, beta=0.5).mask_table(5, 10)
    assert rows(table) == ["11111.....", ".11111....", "..11111...", "....11111.", ".....11111"]


def test_dtr_golden_rows_alpha2():
    # linspace^2 * 5 = [0, .3125, 1.25, 2.8125, 5] -> [0, 0, 1, 3, 5]
    assert window_starts(5, 10, 2.0, 0.5).tolist() == [0, 0, 1, 3, 5]
    assert window_starts(5, 10, 2.0, 0.5).dtype == np.int64  # channel indices, usable as indices
    table = SlidingWindow(alpha=2.0, beta=0.5).mask_table(5, 10)
    assert rows(table)[1] == "11111....." and rows(table)[3] == "...11111.."


def test_dtr_defaults_are_the_papers_and_the_configs():
    """SlidingWindow() and a config without alpha/beta give the same strategy: alpha 4, beta 0.8 (DTR paper)."""
    assert repr(SlidingWindow()) == "dtr(alpha=4, beta=0.8)"
    assert repr(dp.build_strategy("dtr")) == "dtr(alpha=4, beta=0.8)"


@pytest.mark.parametrize("alpha,beta,T,C", [(4.0, 0.8, 1000, 384), (1.0, 0.3, 50, 7), (0.5, 0.9, 10, 33)])
def test_dtr_window_contiguous_and_moving_forward(alpha, beta, T, C):
    table = SlidingWindow(alpha=alpha, beta=beta).mask_table(T, C)
    n = int(np.floor(beta * C))
    assert table.dtype == torch.bool and table.shape == (T, C)
    assert (table.sum(1) == n).all()
    starts = table.int().argmax(1)
    assert (starts.diff() >= 0).all()
    for t in (0, T // 2, T - 1):
        s = int(starts[t])
        assert table[t, s:s + n].all() and table[t].sum() == n  # one contiguous window
    assert starts[0] == 0 and starts[-1] == C - n


def test_dtr_matches_published_formula():
    T, C, beta, alpha = 1000, 64, 0.8, 4
    n = int(C * beta)
    index = ((np.linspace(0, 1, T) ** alpha) * (C - n)).round().astype(np.int64)
    expected = np.zeros((T, C), dtype=bool)
    for t in range(T):
        expected[t, index[t]:index[t] + n] = True
    assert torch.equal(SlidingWindow(alpha=alpha, beta=beta).mask_table(T, C), torch.from_numpy(expected))


def test_dtr_noisy_tasks_own_more_channels():
    starts = window_starts(1000, 384, 4.0, 0.8)
    assert starts[999] - starts[899] > starts[100] - starts[0]


def test_random_exact_count_seeded_and_per_layer():
    s = RandomRouting(beta=0.25, seed=3)
    a = s.mask_table(100, 40, layer=0, num_layers=2)
    assert (a.sum(1) == 10).all()
    assert torch.equal(a, RandomRouting(beta=0.25, seed=3).mask_table(100, 40, layer=0, num_layers=2))
    assert not torch.equal(a, s.mask_table(100, 40, layer=1, num_layers=2))
    assert not torch.equal(a, RandomRouting(beta=0.25, seed=4).mask_table(100, 40, layer=0, num_layers=2))


def test_task_specific_sharing_golden():
    table = TaskSpecificSharing(shared_ratio=0.2, groups=4).mask_table(8, 10)
    assert rows(table) == ["1111......"] * 2 + ["11..11...."] * 2 + ["11....11.."] * 2 + ["11......11"] * 2


@pytest.mark.parametrize("shared_ratio,groups,T,C", [(0.5, 3, 100, 17), (0.0, 4, 1000, 64), (0.25, 7, 50, 10)])
def test_task_specific_sharing_shared_block_and_disjoint_groups(shared_ratio, groups, T, C):
    table = TaskSpecificSharing(shared_ratio=shared_ratio, groups=groups).mask_table(T, C)
    s = int(np.floor(shared_ratio * C))
    assert table[:, :s].all()
    private = table[:, s:]
    owners = private.any(0)
    assert owners.all()  # every private channel belongs to some interval
    distinct = torch.unique(private, dim=0)
    assert len(distinct) == min(groups, T)
    assert (distinct.int().sum(0) == 1).all()  # slices are disjoint and cover the rest


def test_sharing_ratio_one_is_vanilla():
    assert TaskSpecificSharing(shared_ratio=1.0, groups=3).mask_table(10, 8).all()
    assert Vanilla().mask_table(10, 8).all()


def test_build_strategy_by_name_validates_params():
    s = dp.build_strategy("dtr", {"alpha": 4.0, "beta": 0.8})
    assert s.mask_table(num_tasks=1000, channels=384, layer=0, num_layers=12).shape == (1000, 384)
    with pytest.raises(dp.UserError, match="beta"):
        dp.build_strategy("dtr", {"beta": 1.5})
    with pytest.raises(dp.UserError, match="known: .*dtr"):
        dp.build_strategy("nope")


# --- pinned by mutation testing (survivors of `make mutate`; see docs/testing.md) ---
# Strategy and loss-weighting behaviour that mutation testing (``make mutate``) found untested.
#
# Each test pins a value a surviving mutant changed; see docs/testing.md, "Mutation testing".

@pytest.mark.parametrize("cls,name,allowed", [
    (SlidingWindow, "dtr", "alpha, beta"),
    (RandomRouting, "random", "beta, seed"),
    (TaskSpecificSharing, "task_specific_sharing", "groups, shared_ratio"),
    (AntUW, "ant_uw", "k, lr"),
    (P2, "p2", "gamma, k"),
    (MinSNR, "min_snr", "gamma"),
])
def test_plugin_param_errors_name_the_plugin_and_the_allowed_keys(cls, name, allowed):
    """A wrong strategy/weighting param is one line naming plugin.key and the keys allowed."""
    with pytest.raises(ConfigError) as info:
        cls(bogus=1)
    assert str(info.value) == f"{name}.bogus: unknown key (allowed: {allowed})"


@pytest.mark.parametrize("cls,params,key", [
    (SlidingWindow, {"alpha": 0.0}, "dtr.alpha"),
    (SlidingWindow, {"beta": 1.5}, "dtr.beta"),
    (RandomRouting, {"seed": -1}, "random.seed"),
    (TaskSpecificSharing, {"groups": 0}, "task_specific_sharing.groups"),
])
def test_plugin_param_range_errors_name_the_key(cls, params, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        cls(**params)


def test_dtr_mask_for_u_clamps_noise_levels_to_0_1():
    """u below 0 is the clean window, above 1 the noisiest one (the table's first and last rows)."""
    dtr = SlidingWindow(alpha=1.0, beta=0.5)
    table = dtr.mask_table(5, 10)
    got = dtr.mask_for_u(torch.tensor([-0.5, 0.0, 1.0, 1.5]), 10)
    assert torch.equal(got, torch.stack([table[0], table[0], table[-1], table[-1]]))


def test_dtr_mask_for_u_equals_the_table_rows():
    """mask_for_u at u = k / (T - 1) is row k of mask_table(T, C), for the paper's alpha and beta."""
    dtr = SlidingWindow()
    T, C = 50, 37
    u = torch.arange(T, dtype=torch.float64) / (T - 1)
    got = dtr.mask_for_u(u, C)
    assert got.dtype == torch.bool and got.shape == (T, C)
    assert torch.equal(got, dtr.mask_table(T, C))


def test_dtr_mask_for_u_is_built_on_the_device_of_u():
    """The mask lives where u lives (the meta device stands in for a GPU: no data, only placement)."""
    u = torch.zeros(3, device="meta")
    got = SlidingWindow().mask_for_u(u, 8)
    assert got.device.type == "meta" and got.shape == (3, 8) and got.dtype == torch.bool


@pytest.mark.parametrize("strategy", [SlidingWindow(), RandomRouting(), TaskSpecificSharing()], ids=repr)
def test_static_tables_are_bool(strategy):
    """The contract's table dtype is torch.bool (one shared bool buffer per table); a float table would be
    refused by the routing plan only when a model is built."""
    table = strategy.mask_table(10, 8)
    assert table.dtype == torch.bool and tuple(table.shape) == (10, 8)
