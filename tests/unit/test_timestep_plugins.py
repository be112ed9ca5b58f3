"""The ``timestep_sampler`` plugin kind: config ``timesteps:``, both kinds of time, the default chain and errors."""
from __future__ import annotations

import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.compose import compose
from dtr_plugins.core.contracts import TimestepRule, missing_members
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.core.process import GaussianProcess
from dtr_plugins.core.timesteps import ClusterBalancedTimes, ClusterBalancedTimesteps, sampler_record

from ..conftest import tiny_dit_config

FLOW = {"name": "flow_matching"}
GAUSSIAN = GaussianProcess(steps=1000)


def parts_of(tmp_path, *overrides, **changes):
    cfg = dp.load_config(tiny_dit_config(tmp_path, **changes), overrides=list(overrides))
    return compose(cfg, device="meta", data=False)


def test_built_in_rules_are_registered_like_plugins_and_satisfy_the_contract():
    registry = default_registry()
    assert registry.names("timestep_sampler") == ["cluster_balanced", "logit_normal", "speed", "uniform"]
    for name in registry.names("timestep_sampler"):
        info = registry.get("timestep_sampler", name)
        assert info.distribution == "dtr-plugins" and missing_members(info.build(), TimestepRule) == []


GAUSSIAN_100 = GaussianProcess(steps=100)


@pytest.mark.parametrize("name", ["uniform", "logit_normal", "cluster_balanced"])
def test_each_rule_draws_integer_indices_or_continuous_times_as_the_process_needs(name):
    rule = default_registry().build("timestep_sampler", name)
    torch.manual_seed(0)
    discrete = rule.sampler(GAUSSIAN_100, continuous=False)
    t = discrete.sample(64)
    assert not discrete.continuous and t.dtype == torch.int64 and t.shape == (64,)
    assert int(t.min()) >= 0 and int(t.max()) <= 99
    continuous = rule.sampler(GAUSSIAN_100, continuous=True)
    u = continuous.sample(64)
    assert continuous.continuous and u.dtype == torch.float32 and float(u.min()) >= 0 and float(u.max()) <= 1


def test_logit_normal_mean_moves_integer_timesteps_towards_noise():
    torch.manual_seed(0)
    noisy = default_registry().build("timestep_sampler", "logit_normal", mean=1.5).sampler(GAUSSIAN, continuous=False)
    plain = default_registry().build("timestep_sampler", "logit_normal").sampler(GAUSSIAN, continuous=False)
    a, b = noisy.sample(4000).double().mean(), plain.sample(4000).double().mean()
    assert 450 < b < 550 and a > b + 200  # index T-1 is the noisiest


def test_continuous_cluster_balanced_gives_each_chunk_its_interval():
    t = ClusterBalancedTimes(4).sample(10)
    chunks = [t[0:3], t[3:6], t[6:8], t[8:10]]  # 10 = 3 + 3 + 2 + 2
    for i, chunk in enumerate(chunks):
        assert bool(((chunk >= i / 4) & (chunk < (i + 1) / 4)).all()), (i, chunk)
    with pytest.raises(ConfigError, match="cannot cover k=4"):
        ClusterBalancedTimes(4).sample(3)


def test_config_selects_the_sampler_and_meta_records_where_it_came_from(tmp_path):
    chosen = parts_of(tmp_path, timesteps={"name": "cluster_balanced", "k": 4})
    assert isinstance(chosen.timestep_sampler, ClusterBalancedTimesteps) and chosen.timestep_sampler.k == 4
    assert sampler_record(chosen.timestep_sampler, chosen.timestep_source) == {
        "sampler": "cluster_balanced(T=100, k=4)", "continuous": False, "from": "timesteps"}
    flow = parts_of(tmp_path, diffusion=FLOW, sample=None, timesteps={"name": "cluster_balanced", "k": 4})
    assert isinstance(flow.timestep_sampler, ClusterBalancedTimes) and flow.timestep_source == "timesteps"
    default = parts_of(tmp_path)
    assert default.timestep_source == "process" and repr(default.timestep_sampler) == "uniform(T=100)"


def test_ant_uw_keeps_its_cluster_balanced_sampler_unless_the_config_names_one(tmp_path):
    ant = parts_of(tmp_path, loss_weighting={"name": "ant_uw", "k": 5})
    assert ant.timestep_source == "loss_weighting" and repr(ant.timestep_sampler) == "cluster_balanced(T=100, k=5)"
    chosen = parts_of(tmp_path, loss_weighting={"name": "ant_uw", "k": 5}, timesteps={"name": "uniform"})
    assert chosen.timestep_source == "timesteps" and repr(chosen.timestep_sampler) == "uniform(T=100)"


@pytest.mark.parametrize(("changes", "needle"), [
    ({"timesteps": {"name": "nope"}}, "timesteps.name: unknown timestep_sampler 'nope' (known: cluster_balanced"),
    ({"timesteps": {"name": "logit_normal", "std": 0}}, "timesteps.std: Input should be greater than 0"),
    ({"timesteps": {"name": "uniform", "k": 3}}, "timesteps.k: unknown key"),
    ({"timesteps": {"name": "cluster_balanced", "k": 101}}, "timesteps.k: 101 clusters need at least 101 timesteps"),
])
def test_bad_timesteps_sections_are_one_line_in_validate(tmp_path, run_cli, changes, needle):
    path = tiny_dit_config(tmp_path, **changes)
    code, _, err = run_cli("validate", str(path), "--config-only")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
