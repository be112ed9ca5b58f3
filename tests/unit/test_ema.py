"""The ``ema`` plugin kind: its built-in rules, the train.* shorthand, config errors and post-hoc math."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.compose import build_ema, build_loss_weighting, ema_section
from dtr_plugins.core.contracts import EmaRule, missing_members
from dtr_plugins.core.errors import CheckpointError, ConfigError
from dtr_plugins.core.fingerprint import weights_fingerprint
from dtr_plugins.core.phema import exponent_of, posthoc_coefficients, sigma_rel_of
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.training.trainer import TrainState, ema_update

from ..conftest import tiny_dit_config


def load(tmp_path, *overrides, **changes):
    return dp.load_config(tiny_dit_config(tmp_path, **changes), overrides=list(overrides))


def test_built_in_rules_are_registered_like_plugins_and_satisfy_the_contract():
    registry = default_registry()
    assert registry.names("ema") == ["constant", "power", "warmup"]
    for name in registry.names("ema"):
        info = registry.get("ema", name)
        assert info.distribution == "dtr-plugins"  # through the entry point, as a third-party plugin
        assert missing_members(info.build(), EmaRule) == []


def test_train_shorthand_selects_warmup_or_constant(tmp_path):
    cfg = load(tmp_path)  # the tiny config: train.ema_warmup true, no ema section
    assert ema_section(cfg).name == "warmup" and ema_section(cfg).params == {"decay": 0.9999}
    assert build_ema(cfg).betas(0) == [pytest.approx(0.1)] and build_ema(cfg).betas(90) == [pytest.approx(0.91)]
    plain = load(tmp_path, "train.ema_warmup=false", "train.ema_decay=0.99")
    assert ema_section(plain).name == "constant" and build_ema(plain).betas(0) == [0.99]
    assert "ema" not in plain.to_dict() and "timesteps" not in plain.to_dict()  # older runs' fingerprints hold


def test_ema_section_is_the_same_rule_with_the_same_decays(tmp_path):
    section = load(tmp_path, train={"ema_warmup": None}, ema={"name": "warmup", "decay": 0.9999})
    shorthand = load(tmp_path)
    assert [build_ema(section).betas(k) for k in range(20)] == [build_ema(shorthand).betas(k) for k in range(20)]
    assert section.to_dict()["ema"] == {"name": "warmup", "snapshot_every": 0, "decay": 0.9999}
    assert weights_fingerprint(section.to_dict()) != weights_fingerprint(shorthand.to_dict())  # the config differs
    moved = load(tmp_path, "ema.snapshot_every=5", train={"ema_warmup": None}, ema={"name": "warmup"})
    assert weights_fingerprint(moved.to_dict()) == weights_fingerprint(section.to_dict())  # resumable


@pytest.mark.parametrize(("changes", "needle"), [
    ({"ema": {"name": "power"}}, "ema: give either an ema section or its shorthand train.ema_decay"),
    ({"ema": {"name": "nope"}, "train": {"ema_warmup": None}}, "ema.name: unknown ema 'nope' (known: constant, power"),
    ({"ema": {"name": "power", "sigma_rels": [0.5]}, "train": {"ema_warmup": None}}, "ema.sigma_rels: 0.5 is outside"),
    ({"ema": {"name": "power", "sigma_rels": [0.05, 0.0504]}, "train": {"ema_warmup": None}}, "repeats a width"),
    ({"ema": {"name": "constant", "decay": 1.0}, "train": {"ema_warmup": None}}, "ema.decay: Input should be less"),
    ({"ema": {"name": "power", "snapshot_every": -1}, "train": {"ema_warmup": None}}, "ema.snapshot_every"),
])
def test_bad_ema_sections_are_one_line(tmp_path, changes, needle):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, **changes)
    assert needle in str(err.value) and "\n" not in str(err.value) and "tiny.yaml" in str(err.value)


def test_power_rule_tracks_one_average_per_width_and_copies_the_first_update():
    rule = default_registry().build("ema", "power", sigma_rels=[0.10, 0.05])
    assert [p.name for p in rule.profiles()] == ["sigma0.100", "sigma0.050"]
    assert [p.sigma_rel for p in rule.profiles()] == [0.10, 0.05]
    assert rule.betas(0) == [0.0, 0.0]  # the first update copies the weights
    later = rule.betas(999)
    assert 0 < later[1] < later[0] < 1  # the narrower profile (0.05) weighs recent steps more: a lower decay
    np.testing.assert_allclose(later, [(1 - 1 / 1000) ** (g + 1) for g in exponent_of([0.10, 0.05])])


def test_train_state_keeps_one_average_per_profile_and_checkpoints_them():
    model = torch.nn.Linear(2, 2)
    cfg = load_default_cfg()
    weighting = build_loss_weighting(cfg)
    state = TrainState.create(model, weighting, cfg, torch.device("cpu"), profiles=["sigma0.100", "sigma0.050"])
    assert len(state.averages()) == 2 and state.averages()[1] is not state.ema
    for average, beta in zip(state.averages(), [0.5, 0.9]):
        ema_update(average, torch.nn.Linear(2, 2), beta)
    ckpt = state.checkpoint(cfg)
    assert set(ckpt["ema_profiles"]) == {"sigma0.050"}
    fresh = TrainState.create(model, weighting, cfg, torch.device("cpu"), profiles=["sigma0.100", "sigma0.050"])
    fresh.load(ckpt)
    for a, b in zip(state.averages(), fresh.averages()):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(CheckpointError, match="no ema_profiles.sigma0.050"):
        fresh.load({**ckpt, "ema_profiles": {}})


def load_default_cfg():
    from dtr_plugins.core.config import config_from_dict

    return config_from_dict({"name": "x", "backbone": {"name": "dit", "input_size": 8, "patch_size": 2,
                                                       "hidden_size": 32, "depth": 1, "num_heads": 2,
                                                       "in_channels": 1}})


def test_widths_and_exponents_round_trip_and_bad_widths_are_refused():
    widths = np.array([0.01, 0.05, 0.1, 0.2, (1 / 12) ** 0.5])
    np.testing.assert_allclose(sigma_rel_of(exponent_of(widths)), widths, rtol=1e-10)
    assert exponent_of((1 / 12) ** 0.5) == pytest.approx(0.0, abs=1e-9)  # the plain mean
    with pytest.raises(ValueError, match="outside"):
        exponent_of(0.3)


def test_posthoc_reconstruction_of_an_untracked_width_approximates_tracking_it():
    """Track power EMAs of widths 0.05 and 0.10 of a drifting scalar, snapshot them every 25 steps, and rebuild
    width 0.07 at the last step from the snapshots alone: it lands near the average tracked directly with 0.07,
    much nearer than either tracked width (EDM2 section 3.2). A tracked width rebuilds to itself exactly."""
    rng = np.random.default_rng(0)
    steps = 400
    theta = np.cumsum(rng.normal(size=steps)) + np.sin(np.arange(steps) / 30) * 5
    widths = [0.05, 0.10, 0.07]
    gammas = exponent_of(widths)
    avg = np.zeros(3)
    snaps: list[tuple[int, float, float]] = []
    for k in range(steps):
        beta = (1 - 1 / (k + 1)) ** (gammas + 1)
        avg = beta * avg + (1 - beta) * theta[k]
        if (k + 1) % 25 == 0:
            snaps += [(k + 1, widths[i], float(avg[i])) for i in range(2)]
    t_in, s_in, v_in = (np.array(c) for c in zip(*snaps))
    coef = posthoc_coefficients(t_in, s_in, steps, [0.07, 0.05])
    rebuilt, itself = coef.T @ v_in
    assert abs(rebuilt - avg[2]) < 0.05 * min(abs(avg[0] - avg[2]), abs(avg[1] - avg[2]))
    assert itself == pytest.approx(avg[0], rel=1e-9, abs=1e-9)


def test_an_ema_rule_with_unusable_profile_names_is_one_plugin_error(tmp_path):
    from dtr_plugins.core.contracts import EmaProfile
    from dtr_plugins.core.errors import PluginError

    from ..conftest import registry_with

    class Slashes:
        def profiles(self):
            return [EmaProfile("a/b")]

        def betas(self, step):
            return [0.5]

        def applied(self):
            return {}

    from dtr_plugins.core.config import EmaSection

    cfg = load(tmp_path, train={"ema_warmup": None}, ema={"name": "power"})
    cfg = cfg.model_copy(update={"ema": EmaSection(name="slashes")})
    registry = registry_with("ema", "slashes", Slashes)
    with pytest.raises(PluginError, match=r"profiles\(\) must name one or more distinct profiles.*'a/b'"):
        build_ema(cfg, registry)


# ------------------------------------------------------------------- pinned by mutation testing (core/phema.py)
def test_phema_math_is_float64_whatever_the_input_dtype():
    """Every function promises float64: float32 and integer inputs are read as float64 before any arithmetic
    (a float32 width would give a float32 exponent, off in the 7th digit)."""
    from dtr_plugins.core.phema import profile_inner_products

    widths32 = np.array([0.05, 0.1], dtype=np.float32)
    exact = exponent_of(widths32.astype(np.float64))
    got = exponent_of(widths32)
    assert got.dtype == np.float64 and np.array_equal(got, exact)
    assert sigma_rel_of(np.float32(2.5)).dtype == np.float64
    assert sigma_rel_of(np.float32(2.5)) == sigma_rel_of(2.5)
    assert sigma_rel_of(np.array([0, 1, 2])).dtype == np.float64  # integer exponents
    ints = profile_inner_products(np.array([3]), np.array([1]), np.array([2]), np.array([2]))
    assert ints.dtype == np.float64
    f32 = profile_inner_products(*(np.array([v], dtype=np.float32) for v in (3.1, 1.3, 2.2, 2.7)))
    assert f32.dtype == np.float64
    assert f32[0] == profile_inner_products(*(np.array([v], dtype=np.float64) for v in
                                              (np.float32(3.1), np.float32(1.3), np.float32(2.2), np.float32(2.7))))[0]
    coef = posthoc_coefficients(np.array([10, 20, 30], dtype=np.int64), np.array([0.05, 0.1, 0.05], np.float32),
                                np.int64(30), np.float32(0.07))
    ref = posthoc_coefficients([10.0, 20.0, 30.0], np.array([0.05, 0.1, 0.05], np.float32).astype(np.float64),
                               30.0, float(np.float32(0.07)))
    assert coef.dtype == np.float64 and coef.shape == (3, 1) and np.array_equal(coef, ref)


def test_profile_inner_product_equals_the_integral_of_the_two_profiles():
    """``<p_a, p_b>`` against a fine midpoint sum of ``p_a(tau) p_b(tau)`` over ``[0, min(t_a, t_b)]`` (EDM2
    eq. 151), for profiles of different exponents in both orders and of equal times."""
    from dtr_plugins.core.phema import profile_inner_products

    def profile(t, g, tau):
        return (g + 1) * tau ** g / t ** (g + 1)

    for t_a, g_a, t_b, g_b in ((7.0, 2.0, 4.0, 5.0), (4.0, 5.0, 7.0, 2.0), (5.0, 1.5, 5.0, 6.0)):
        n = 400_000
        tau = (np.arange(n) + 0.5) * min(t_a, t_b) / n
        numeric = np.sum(profile(t_a, g_a, tau) * profile(t_b, g_b, tau)) * min(t_a, t_b) / n
        assert float(profile_inner_products(t_a, g_a, t_b, g_b)) == pytest.approx(numeric, rel=1e-6)


def test_width_zero_and_shapes_of_the_coefficients():
    with pytest.raises(ValueError, match=r"sigma_rel 0\.0 is outside"):
        exponent_of(0.0)
    coef = posthoc_coefficients([[10.0, 20.0], [30.0, 40.0]], 0.05, [[40.0], [35.0]], [0.05, 0.07])
    assert coef.shape == (4, 4) and np.allclose(coef.sum(axis=0), 1.0)  # outputs: t (40, 35) x width (0.05, 0.07)
    assert coef[:, 0] == pytest.approx([0, 0, 0, 1], abs=1e-9)  # a tracked snapshot rebuilds to itself


def test_power_rule_defaults_and_its_record():
    from dtr_plugins.ema.builtin import PowerEma

    rule = PowerEma()
    assert rule.sigma_rels == [0.05, 0.10] and rule.exponents == [float(g) for g in exponent_of([0.05, 0.10])]
    assert rule.applied() == {"name": "power", "sigma_rels": [0.05, 0.10], "exponents": rule.exponents,
                              "profiles": ["sigma0.050", "sigma0.100"], "time": "optimizer steps"}
    assert default_registry().build("ema", "power").applied()["sigma_rels"] == [0.05, 0.10]


def test_constant_and_warmup_records_say_what_was_applied():
    registry = default_registry()
    assert registry.build("ema", "constant", decay=0.99).applied() == {"name": "constant", "decay": 0.99,
                                                                       "profiles": ["ema"]}
    assert [p.name for p in registry.build("ema", "constant", decay=0.99).profiles()] == ["ema"]
    assert [p.name for p in registry.build("ema", "warmup", decay=0.99).profiles()] == ["ema"]
    warmup = registry.build("ema", "warmup", decay=0.999).applied()
    assert warmup["name"] == "warmup" and warmup["decay"] == 0.999 and warmup["profiles"] == ["ema"]
    assert warmup["rule"] == "min(decay, (1 + step) / (10 + step))"
