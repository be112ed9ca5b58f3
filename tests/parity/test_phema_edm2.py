"""Power-function EMA (``power`` rule, :mod:`dtr_plugins.core.phema`) against EDM2's own ``training/phema.py``.

The fixture ``tests/fixtures/edm2_phema_reference.npz`` holds inputs and outputs of the official functions
(tests/fixtures/README.md: script, commit, checksum); these tests recompute the outputs with this project's code.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from dtr_plugins.core.phema import exponent_of, posthoc_coefficients, power_beta, sigma_rel_of
from dtr_plugins.ema.builtin import PowerEma

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "edm2_phema_reference.npz"
SHA256 = "1337091d13b1d8507102777d890d418a56e139fa780da481e60a1ce879a1f51a"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == SHA256, "fixture differs from tests/fixtures/README.md"
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def test_exponent_of_each_width_matches_edm2(ref):
    np.testing.assert_allclose(exponent_of(ref["exp_std"]), ref["exp"], rtol=1e-12)
    np.testing.assert_allclose(sigma_rel_of(ref["exp"]), ref["exp_std"], rtol=1e-12)  # and back


def test_beta_per_step_matches_edm2(ref):
    ours = [power_beta(s, t, d) for s, t, d in zip(ref["beta_std"], ref["beta_t_next"], ref["beta_t_delta"])]
    np.testing.assert_allclose(ours, ref["beta"], rtol=1e-12, atol=0)
    images = [power_beta(s, 10_000_000 + 2048, 2048) for s in (0.05, 0.10)]
    np.testing.assert_allclose(images, ref["beta_img"], rtol=1e-12)


def test_power_rule_decays_are_edm2s_in_optimizer_steps(ref):
    """The ``power`` rule's decay after optimizer step ``k`` (0-based) is EDM2's with ``t_next = k + 1``, ``t_delta
    = 1``: the rows of the fixture with step length 1."""
    for width in (0.05, 0.10, 0.20):
        rule = PowerEma([width])
        rows = (ref["beta_std"] == width) & (ref["beta_t_delta"] == 1.0)
        for t, beta in zip(ref["beta_t_next"][rows], ref["beta"][rows]):
            assert rule.betas(int(t) - 1)[0] == pytest.approx(beta, rel=1e-12, abs=0)


@pytest.mark.parametrize("case", ["ph", "ph2"])
def test_posthoc_coefficients_match_edm2(ref, case):
    ours = posthoc_coefficients(ref[f"{case}_in_t"], ref[f"{case}_in_std"], ref[f"{case}_out_t"],
                                ref[f"{case}_out_std"])
    assert ours.shape == ref[f"{case}_coef"].shape
    scale = np.abs(ref[f"{case}_coef"]).max()
    np.testing.assert_allclose(ours, ref[f"{case}_coef"], rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(ours.sum(axis=0), 1.0, rtol=1e-12)
