"""The ``speed`` timestep rule against SpeeD's own ``SpeeDiffusion`` (1zeryu/SpeeD, ``speed/diffusion/iddpm/speed.py``).

The fixture ``tests/fixtures/speed_timesteps_reference.pt`` holds, per schedule, the official sampling weights,
``meaningful_steps`` and ``t_sample`` draws under fixed seeds (tests/fixtures/README.md: script, commit,
checksum); the tests rebuild them from this project's gaussian process and compare, draws bit for bit.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.flow import FlowMatching
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.core.process import GaussianProcess

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "speed_timesteps_reference.pt"
SHA256 = "16d790e6971fe7871b4c7a0770b7def2b23e1a56e0cb631b8b1f1d20afc435ea"
CASES = [("linear", 1000), ("cosine", 1000), ("linear", 250)]
DRAWS = [(8, 0), (9, 1), (64, 2)]


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == SHA256, "fixture differs from tests/fixtures/README.md"
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize(("schedule", "steps"), CASES)
def test_weights_meaningful_steps_and_draws_match_speed(ref, schedule, steps):
    key = f"{schedule}{steps}"
    sampler = default_registry().build("timestep_sampler", "speed").sampler(
        GaussianProcess(steps=steps, schedule=schedule), continuous=False)
    assert sampler.meaningful_steps == int(ref[f"{key}/meaningful_steps"])
    torch.testing.assert_close(sampler.probs, ref[f"{key}/p"], rtol=1e-12, atol=0)
    for n, seed in DRAWS:
        torch.manual_seed(seed)
        t = sampler.sample(n, "cpu")
        assert t.dtype == torch.int64 and torch.equal(t, ref[f"{key}/t_n{n}_seed{seed}"]), (key, n, seed)


def test_speed_refuses_continuous_time_in_one_line():
    rule = default_registry().build("timestep_sampler", "speed")
    with pytest.raises(ConfigError, match="timesteps.name: 'speed' draws integer timesteps"):
        rule.sampler(FlowMatching(), continuous=True)
