"""Loss weightings: hand-computed weights, ANT-UW stratification and learnable weights, registry."""
import math

import numpy as np
import pytest
import torch

from dtr_plugins.core.contracts import TimestepSampler
from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.core.process import GaussianProcess
from dtr_plugins.core.timesteps import (
    ClusterBalancedTimesteps,
    LogitNormalTimes,
    UniformTimes,
    UniformTimesteps,
    training_sampler,
)
from dtr_plugins.strategies.random import RandomRouting
from dtr_plugins.strategies.task_specific_sharing import TaskSpecificSharing, _split
from dtr_plugins.strategies.vanilla import Vanilla
from dtr_plugins.weighting import ant_uw, constant, min_snr, p2
from dtr_plugins.weighting.ant_uw import AntUW, cluster_edges
from dtr_plugins.weighting.base import LossWeighting
from dtr_plugins.weighting.constant import Constant
from dtr_plugins.weighting.min_snr import MinSNR
from dtr_plugins.weighting.p2 import P2


class FakeDiffusion:
    """Known SNR per timestep index."""

    def __init__(self, snrs, num_timesteps=None):
        self.table = torch.tensor(snrs, dtype=torch.float32)
        self.num_timesteps = num_timesteps or len(snrs)

    def snr(self, t):
        return self.table[t]


T3 = torch.tensor([0, 1, 2])
TERMS = {"mse": torch.tensor([1.0, 2.0, 3.0]), "vb": torch.tensor([0.1, 0.2, 0.3])}
TERMS["loss"] = TERMS["mse"] + TERMS["vb"]


def test_constant_is_the_mean_loss():
    w = Constant()
    assert w(TERMS, T3, FakeDiffusion([1.0, 2.0, 3.0])).item() == pytest.approx(2.2)
    assert w.param_groups() == [] and w.log_values() == {} and list(w.state_dict()) == []


def test_min_snr_weights_by_hand():
    w = MinSNR(gamma=5.0)
    diff = FakeDiffusion([0.5, 5.0, 20.0])
    torch.testing.assert_close(w.weight(T3, diff), torch.tensor([1.0, 1.0, 0.25]))
    # mean(w * mse + vb) = (1 + 2 + 0.75 + 0.6) / 3
    assert w(TERMS, T3, diff).item() == pytest.approx((1 + 2 + 0.75 + 0.6) / 3)
    torch.testing.assert_close(MinSNR(gamma=1.0).weight(T3, diff), torch.tensor([1.0, 0.2, 0.05]))


def test_min_snr_against_the_real_schedule():
    d = GaussianDiffusion(get_named_beta_schedule("linear", 1000), learn_sigma=True)
    t = torch.tensor([0, 100, 500, 999])
    abar = d.alphas_cumprod[t.numpy()]
    snr = abar / (1 - abar)
    expect = np.minimum(snr, 5.0) / snr
    np.testing.assert_allclose(MinSNR().weight(t, d).numpy(), expect, rtol=1e-5)
    assert expect[0] < 1e-3 and expect[-1] == 1.0  # clean steps down-weighted, noisy ones untouched


def test_p2_weights_by_hand():
    diff = FakeDiffusion([0.0, 1.0, 3.0])
    torch.testing.assert_close(P2().weight(T3, diff), torch.tensor([1.0, 0.5, 0.25]))
    torch.testing.assert_close(P2(gamma=0.5, k=1.0).weight(T3, diff), torch.tensor([1.0, 1 / math.sqrt(2), 0.5]))
    torch.testing.assert_close(P2(gamma=1.0, k=2.0).weight(T3, diff), torch.tensor([0.5, 1 / 3, 0.2]))
    assert P2(gamma=0.0).weight(T3, diff).tolist() == [1.0, 1.0, 1.0]
    # per sample, then averaged: mean(w_i * mse_i + vb_i), not mean(w) * mean(mse)
    assert P2()(TERMS, T3, diff).item() == pytest.approx((1 + 1 + 0.75 + 0.6) / 3)


def test_uniform_sampling_uses_the_global_generator():
    torch.manual_seed(3)
    a = UniformTimesteps(1000).sample(64, "cpu")
    torch.manual_seed(3)
    b = UniformTimesteps(1000).sample(64, "cpu")
    assert torch.equal(a, b) and a.dtype == torch.long and a.min() >= 0 and a.max() < 1000


# ------------------------------------------------------------------------------------------------
# ANT-UW
# ------------------------------------------------------------------------------------------------

def test_ant_uw_stratified_timesteps():
    w = AntUW(k=4)
    assert cluster_edges(100, 4) == [0, 25, 50, 75, 100]
    torch.manual_seed(0)
    t = w.timestep_sampler(100).sample(400, "cpu")
    assert t.dtype == torch.long
    for i, chunk in enumerate(t.view(4, 100)):
        assert chunk.min() >= 25 * i and chunk.max() < 25 * (i + 1)
        assert len(chunk.unique()) > 15  # spread over the cluster, not one value
    assert w.clusters_of(t, 100).tolist() == sum(([i] * 100 for i in range(4)), [])

    # uneven clusters (T = 10, k = 4: [0, 2, 5, 7, 10]) and an uneven batch (sizes 3, 3, 2, 2)
    t = w.timestep_sampler(10).sample(10, "cpu")
    assert w.clusters_of(t, 10).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    torch.manual_seed(1)
    a = w.timestep_sampler(1000).sample(16, "cpu")
    torch.manual_seed(1)
    assert torch.equal(a, w.timestep_sampler(1000).sample(16, "cpu"))
    with pytest.raises(ConfigError, match="at least 4"):
        w.timestep_sampler(1000).sample(3, "cpu")


def test_ant_uw_loss_and_gradient_by_hand():
    w = AntUW(k=2)
    diff = FakeDiffusion([1.0] * 10)
    t = torch.tensor([0, 3, 5, 9])  # clusters [0, 5) and [5, 10)
    terms = {"loss": torch.tensor([1.0, 3.0, 4.0, 8.0])}
    L = [2.0 / 2, 6.0 / 2]  # chunk means divided by k
    loss = w(terms, t, diff)
    assert loss.item() == pytest.approx(0.5 * (L[0] + L[1]))  # s = 0
    loss.backward()
    torch.testing.assert_close(w.log_vars.grad, torch.tensor([0.5 * (1 - L[0]), 0.5 * (1 - L[1])]))

    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -1.0]))
    expect = 0.5 * (math.exp(-0.5) * L[0] + 0.5) + 0.5 * (math.exp(1.0) * L[1] - 1.0)
    assert w(terms, t, diff).item() == pytest.approx(expect, rel=1e-6)
    # a cluster with no sample adds nothing
    assert w(terms, torch.tensor([0, 1, 2, 3]), diff).item() == pytest.approx(
        0.5 * (math.exp(-0.5) * 4.0 / 2 + 0.5), rel=1e-6)


def test_ant_uw_param_groups_state_and_logs():
    w = AntUW(k=3, lr=0.025)
    groups = w.param_groups()
    assert len(groups) == 1 and groups[0]["params"][0] is w.log_vars
    assert groups[0]["lr"] == 0.025 and groups[0]["weight_decay"] == 0.0
    assert w.log_values() == {"uw_weight_0": 0.5, "uw_weight_1": 0.5, "uw_weight_2": 0.5}

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW([{"params": model.parameters()}, *groups], lr=1e-4, weight_decay=0.01)
    assert (opt.param_groups[1]["lr"], opt.param_groups[1]["weight_decay"]) == (0.025, 0.0)
    assert opt.param_groups[0]["lr"] == 1e-4
    diff = FakeDiffusion([1.0] * 30)
    w({"loss": torch.tensor([5.0, 0.5, 1.0])}, torch.tensor([0, 12, 25]), diff).backward()
    with torch.no_grad():  # a plain gradient step (an optimizer's first step is slow to warm up)
        w.log_vars -= groups[0]["lr"] * w.log_vars.grad
    assert (w.log_vars.detach() != 0).all()

    state = w.state_dict()
    assert list(state) == ["log_vars"]
    other = AntUW(k=3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.log_vars, w.log_vars)
    s = w.log_vars.detach()
    assert other.log_values() == pytest.approx({f"uw_weight_{i}": 0.5 * math.exp(-s[i].item()) for i in range(3)})


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------

def test_registry_lookup():
    registry = build_registry(modules=[constant, min_snr, p2, ant_uw], entry_points=False)
    assert registry.names("loss_weighting") == ["ant_uw", "constant", "min_snr", "p2"]
    assert isinstance(registry.build("loss_weighting", "constant"), Constant)
    built = registry.build("loss_weighting", "min_snr", gamma=2.0)
    assert isinstance(built, MinSNR) and built.gamma == 2.0
    assert registry.build("loss_weighting", "min_snr").gamma == 5.0
    built = registry.build("loss_weighting", "p2", gamma=0.5)
    assert (built.gamma, built.k) == (0.5, 1.0)
    built = registry.build("loss_weighting", "ant_uw")
    assert isinstance(built, AntUW) and built.k == 8 and built.log_vars.shape == (8,)
    for name in ("constant", "min_snr", "p2", "ant_uw"):
        assert registry.get("loss_weighting", name).description
    with pytest.raises(ConfigError, match="unknown key"):
        registry.build("loss_weighting", "min_snr", gama=5)
    with pytest.raises(ConfigError, match="gamma"):
        registry.build("loss_weighting", "min_snr", gamma=-1)


@pytest.mark.filterwarnings("ignore::dtr_plugins.core.plugins.PluginLoadWarning")  # other plugins may be absent
def test_entry_points_name_the_weightings():
    registry = build_registry()
    for name, module in (("constant", "constant"), ("min_snr", "min_snr"), ("p2", "p2"), ("ant_uw", "ant_uw")):
        assert registry.get("loss_weighting", name).plugin == f"dtr_plugins.weighting.{module}"


# --- pinned by mutation testing (survivors of `make mutate`; see docs/testing.md) ---
# Loss-weighting behaviour that mutation testing (``make mutate``) found untested: boundaries of ANT-UW's
# clusters and checks, the MSE weightings on a real schedule and on a loss-only diffusion, devices and
# dtypes. See docs/testing.md.

def test_uniform_sampling_reaches_every_timestep_on_the_given_device():
    torch.manual_seed(0)
    t = UniformTimesteps(5).sample(2000)
    assert sorted(t.unique().tolist()) == [0, 1, 2, 3, 4]
    assert UniformTimesteps(5).sample(3, device="meta").device.type == "meta"


def test_ant_uw_reaches_every_timestep_of_every_cluster():
    torch.manual_seed(0)
    w = AntUW(k=4)
    t = w.timestep_sampler(8).sample(4000)  # clusters of width 2
    for i, chunk in enumerate(t.view(4, 1000)):
        assert sorted(chunk.unique().tolist()) == [2 * i, 2 * i + 1]


def test_ant_uw_boundaries_of_its_checks():
    w = AntUW(k=4)
    assert w.timestep_sampler(4).sample(4).tolist() == [0, 1, 2, 3]  # batch == k and T == k are enough
    assert AntUW(k=1).timestep_sampler(10).sample(3).shape == (3,)
    with pytest.raises(ConfigError) as info:
        w.timestep_sampler(3).sample(4)
    assert str(info.value) == "ant_uw: k=4 clusters need at least 4 timesteps (got 3)"
    with pytest.raises(ConfigError) as info:
        w.timestep_sampler(100).sample(3)
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


# --- timestep samplers: the training loop draws t, the weighting only weighs ---

def test_weightings_only_weigh_and_ant_uw_names_its_sampler():
    for cls in (LossWeighting, Constant, MinSNR, P2, AntUW):
        assert not hasattr(cls, "sample_timesteps")  # no weighting draws timesteps any more
    assert LossWeighting().timestep_sampler(10) is None and MinSNR().timestep_sampler(10) is None
    sampler = AntUW(k=4).timestep_sampler(100)
    assert isinstance(sampler, ClusterBalancedTimesteps) and (sampler.num_timesteps, sampler.k) == (100, 4)
    assert isinstance(sampler, TimestepSampler) and sampler.continuous is False


def _old_ant_uw_draw(n, num_timesteps, k):
    """ANT-UW's draw as the weighting made it before samplers were objects (the same RNG calls)."""
    edges = torch.tensor(cluster_edges(num_timesteps, k))
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    cluster = torch.repeat_interleave(torch.arange(k), torch.tensor(sizes))
    low, width = edges[cluster], (edges[1:] - edges[:-1])[cluster]
    return low + torch.minimum((torch.rand(n) * width).long(), width - 1)


@pytest.mark.parametrize("weighting", ["constant", "ant_uw"])
def test_the_runs_sampler_draws_what_the_old_path_drew_and_the_process_sees_it(weighting):
    process = GaussianProcess(steps=50, learn_sigma=False)
    w = Constant() if weighting == "constant" else AntUW(k=4)
    sampler = training_sampler(process, w)
    assert isinstance(sampler, UniformTimesteps if weighting == "constant" else ClusterBalancedTimesteps)
    x0 = torch.randn(10, 1, 4, 4)

    def model(x, t):
        return x * 0.5 + t.view(-1, 1, 1, 1).float() / 50

    torch.manual_seed(5)
    t = sampler.sample(10)
    new = process.training_losses(model, x0, t)
    after = torch.rand(3)
    torch.manual_seed(5)
    t_old = torch.randint(0, 50, (10,)) if weighting == "constant" else _old_ant_uw_draw(10, 50, 4)
    old = process.training_losses(model, x0, t_old)
    assert torch.equal(t, t_old) and torch.equal(new["loss"], old["loss"])
    assert torch.equal(after, torch.rand(3))  # the same number of draws from the global generator


def test_a_weighting_sampler_of_the_wrong_time_kind_is_refused():
    from dtr_plugins.core.flow import FlowMatching

    flow = FlowMatching()
    assert isinstance(training_sampler(flow, Constant()), UniformTimes)
    assert isinstance(FlowMatching(time_sampling="logit_normal").timestep_sampler(), LogitNormalTimes)
    with pytest.raises(ConfigError, match=r"^loss_weighting.name: 'ant_uw' draws integer timesteps"):
        training_sampler(flow, AntUW(k=4), "ant_uw")
    with pytest.raises(ConfigError, match="need at least 4 timesteps"):
        training_sampler(GaussianProcess(steps=3, schedule="cosine"), AntUW(k=4))
