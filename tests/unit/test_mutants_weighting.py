"""Loss-weighting behaviour that mutation testing (``make mutate``) found untested: boundaries of ANT-UW's
clusters and checks, the MSE weightings on a real schedule and on a loss-only diffusion, devices and
dtypes. See docs/testing.md."""
import pytest
import torch

from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.strategies.random import RandomRouting
from dtr_plugins.strategies.task_specific_sharing import TaskSpecificSharing, _split
from dtr_plugins.strategies.vanilla import Vanilla
from dtr_plugins.weighting.ant_uw import AntUW
from dtr_plugins.weighting.base import LossWeighting
from dtr_plugins.weighting.constant import Constant
from dtr_plugins.weighting.min_snr import MinSNR
from dtr_plugins.weighting.p2 import P2


class FakeDiffusion:
    def __init__(self, snrs):
        self.table = torch.tensor(snrs, dtype=torch.float32)
        self.num_timesteps = len(snrs)

    def snr(self, t):
        return self.table[t]


def test_uniform_sampling_reaches_every_timestep_on_the_given_device():
    torch.manual_seed(0)
    t = LossWeighting().sample_timesteps(2000, 5)
    assert sorted(t.unique().tolist()) == [0, 1, 2, 3, 4]
    assert LossWeighting().sample_timesteps(3, 5, device="meta").device.type == "meta"


def test_ant_uw_reaches_every_timestep_of_every_cluster():
    torch.manual_seed(0)
    w = AntUW(k=4)
    t = w.sample_timesteps(4000, 8)  # clusters of width 2
    for i, chunk in enumerate(t.view(4, 1000)):
        assert sorted(chunk.unique().tolist()) == [2 * i, 2 * i + 1]


def test_ant_uw_boundaries_of_its_checks():
    w = AntUW(k=4)
    assert w.sample_timesteps(4, 4).tolist() == [0, 1, 2, 3]  # batch == k and T == k are enough
    assert AntUW(k=1).sample_timesteps(3, 10).shape == (3,)
    with pytest.raises(ConfigError) as info:
        w.sample_timesteps(4, 3)
    assert str(info.value) == "ant_uw: k=4 clusters need at least 4 timesteps (got 3)"
    with pytest.raises(ConfigError) as info:
        w.sample_timesteps(3, 100)
    assert str(info.value) == ("ant_uw: batch of 3 per step cannot cover k=4 timestep clusters; use a batch of at "
                               "least 4 (a multiple of 4 keeps clusters equal)")


def test_ant_uw_clusters_on_the_device_of_t():
    t = torch.tensor([0, 5, 9], device="meta")
    assert AntUW(k=2).clusters_of(t, 10).device.type == "meta"


def test_ant_uw_one_sample_per_cluster_and_dtype():
    w = AntUW(k=2)
    terms = {"loss": torch.tensor([2.0, 6.0], dtype=torch.float64)}
    loss = w(terms, torch.tensor([0, 9]), FakeDiffusion([1.0] * 10))
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(0.5 * (2.0 / 2) + 0.5 * (6.0 / 2))  # s = 0: 0.5 * L_i / k per cluster
    half = w({"loss": torch.tensor([2.0, 6.0], dtype=torch.bfloat16)}, torch.tensor([0, 9]), FakeDiffusion([1.0] * 10))
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize("weighting", [MinSNR(gamma=5.0), P2(gamma=1.0, k=1.0)])
def test_mse_weightings_on_the_real_schedule(weighting):
    d = GaussianDiffusion(get_named_beta_schedule("linear", 1000), learn_sigma=True)
    t = torch.tensor([0, 10, 500, 999])
    mse, vb = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.5, 0.25, 0.125, 0.0])
    w = weighting.weight(t, d)
    expect = (w * mse + vb).mean()
    torch.testing.assert_close(weighting({"mse": mse, "vb": vb, "loss": mse + vb}, t, d), expect)
    # a diffusion that reports only "loss": the whole of it is weighted
    torch.testing.assert_close(weighting({"loss": mse + vb}, t, d), (w * (mse + vb)).mean())
    # the weight follows the loss's dtype
    got = weighting({"mse": mse.double(), "loss": mse.double()}, t, d)
    assert got.dtype == torch.float64
    assert weighting({"mse": mse.bfloat16(), "loss": mse.bfloat16()}, t, d).dtype == torch.bfloat16


def test_random_routing_layer_i_draws_with_seed_plus_i():
    r = RandomRouting(beta=0.5, seed=3)
    assert torch.equal(r.mask_table(6, 8), r.mask_table(6, 8, layer=0))  # the default layer is 0
    assert torch.equal(r.mask_table(6, 8, layer=2), RandomRouting(beta=0.5, seed=5).mask_table(6, 8, layer=0))
    assert not torch.equal(r.mask_table(6, 8), r.mask_table(6, 8, layer=1))


def test_reprs_name_the_plugins():
    """Reprs go into run records and plan descriptions (RoutingPlan.strategy_repr, the model printout)."""
    assert repr(Vanilla()) == "vanilla"
    assert repr(Constant()) == "Constant(constant)"
    assert repr(RandomRouting()) == "random(beta=0.8, seed=0)"
    assert repr(TaskSpecificSharing()) == "task_specific_sharing(shared_ratio=0.5, groups=4)"
    assert repr(AntUW()) == "AntUW(k=8, lr=0.025)"
    assert repr(MinSNR()) == "MinSNR(gamma=5)" and repr(P2()) == "P2(gamma=1, k=1)"


def test_task_specific_sharing_split():
    assert _split(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert _split(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
