"""Strategy and loss-weighting behaviour that mutation testing (``make mutate``) found untested.

Each test pins a value a surviving mutant changed; see docs/testing.md, "Mutation testing".
"""
import pytest
import torch

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.strategies.dtr import SlidingWindow
from dtr_plugins.strategies.random import RandomRouting
from dtr_plugins.strategies.task_specific_sharing import TaskSpecificSharing
from dtr_plugins.weighting.ant_uw import AntUW
from dtr_plugins.weighting.min_snr import MinSNR
from dtr_plugins.weighting.p2 import P2


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
