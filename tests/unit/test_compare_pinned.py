"""Paired comparisons: exact messages, boundaries and arguments of experiments/compare.py."""
import pytest

from dtr_plugins.core.metrics import compared
from dtr_plugins.experiments.compare import (
    NOT_RESOLVABLE,
    NOT_RESOLVED,
    Claim,
    PairedDifference,
    RunRecord,
    _verdict,
    check_claims,
    compare_runs,
    first_reach,
    t_interval,
)

FID, HELD, ACC, PREC = "frechet_inception_distance", "heldout/total", "class_accuracy", "precision"
KNOWN = ", ".join(compared())


# --- pinned by mutation testing (survivors of `make mutate`; see docs/testing.md) ---
def pair(seed, curves, ref_curves, *, strategy="dtr", fingerprints=(None, None), axis="routing", base="vanilla"):
    """A strategy run and its baseline run with the same seed."""
    return [RunRecord(f"{strategy}{seed}", seed, {axis: strategy}, curves, heldout_fingerprint=fingerprints[0]),
            RunRecord(f"{base}{seed}", seed, {axis: base}, ref_curves, heldout_fingerprint=fingerprints[1])]


def row(result, metric):
    return next(d for d in result.differences if d.metric == metric)


def test_t_interval_of_nothing_says_so():
    with pytest.raises(ValueError, match="^no values$"):
        t_interval([])


def test_verdict_boundaries_an_interval_ending_exactly_at_zero_contains_zero():
    spread = [1.0, 2.0, 3.0]
    assert _verdict(spread, (0.0, 2.0), True, "better", "worse") == (NOT_RESOLVED, "interval contains 0")
    assert _verdict(spread, (-2.0, 0.0), True, "better", "worse") == (NOT_RESOLVED, "interval contains 0")
    assert _verdict(spread, (0.5, 2.0), True, "better", "worse") == ("better", "")
    assert _verdict(spread, (0.5, 2.0), False, "better", "worse") == ("worse", "")
    assert _verdict(spread, (-2.0, -0.5), True, "better", "worse") == ("worse", "")
    assert _verdict(spread, (-2.0, -0.5), False, "better", "worse") == ("better", "")


def test_first_reach_counts_an_equal_value_as_reached():
    assert first_reach([(1, 0.1), (2, 0.4), (3, 0.5)], 0.4, "higher") == 2
    assert first_reach([(1, 0.9), (2, 0.4), (3, 0.3)], 0.4, "lower") == 2


def test_a_seed_left_out_of_a_pair_does_not_end_the_pairing():
    # seed 0 drops out of every metric, for a different reason each; seeds 1..3 still pair
    runs = pair(0, {FID: [], HELD: [(10, 1.0)], PREC: [(20, 0.5)]}, {FID: [(10, 5.0)], HELD: [(10, 1.0)],
                                                                      PREC: [(10, 0.5)]}, fingerprints=("a", "b"))
    for seed, d in zip((1, 2, 3), (0.10, 0.11, 0.12)):
        runs += pair(seed, {FID: [(10, 5.0 + d)], HELD: [(10, 1.0 + d)], PREC: [(10, 0.5 + d)]},
                     {FID: [(10, 5.0)], HELD: [(10, 1.0)], PREC: [(10, 0.5)]})
    result = compare_runs(runs)
    assert [(d.metric, d.seeds) for d in result.differences] == [(HELD, (1, 2, 3)), (FID, (1, 2, 3)),
                                                                  (PREC, (1, 2, 3))]
    assert row(result, HELD).reason == "seed 0: held-out inputs differ from the baseline's"
    assert row(result, PREC).reason == "seed 0: final steps differ (20 vs 10)"
    assert row(result, FID).reason == ""  # a run without the metric is no pair, and no note


def test_a_metric_no_seed_could_pair_gives_an_empty_row_at_the_family_level():
    runs = pair(0, {FID: [(20, 4.0)], PREC: [(20, 0.4)]}, {FID: [(10, 5.0)], PREC: [(10, 0.5)]})
    runs += pair(1, {FID: [(20, 4.0)], PREC: [(20, 0.4)]}, {FID: [(10, 5.0)], PREC: [(10, 0.5)]})
    d = row(compare_runs(runs), FID)
    assert (d.strategy, d.setting, d.metric, d.direction, d.step, d.seeds, d.baseline, d.values, d.mean,
            d.interval, d.verdict) == ("dtr", (), FID, "lower", None, (), (), (), None, None, NOT_RESOLVABLE)
    assert d.reason == "seed 0: final steps differ (20 vs 10); seed 1: final steps differ (20 vs 10)"
    assert (d.family, d.family_size) == ("other metrics", 2) and d.interval_level == pytest.approx(0.975)
    empty = compare_runs(pair(0, {FID: []}, {FID: []}) + pair(1, {FID: []}, {FID: []}))
    assert row(empty, FID).reason == "no pair has this metric" and row(empty, FID).verdict == NOT_RESOLVABLE


def test_two_final_steps_across_seeds_are_noted_after_the_verdict():
    runs = []
    for seed, (step, d) in enumerate(((10, -1.0), (10, -1.1), (20, -0.9))):
        runs += pair(seed, {FID: [(step, 5.0 + seed + d)]}, {FID: [(step, 5.0 + seed)]})
    d = row(compare_runs(runs), FID)
    assert d.verdict == "better" and d.reason == "final steps differ between seeds (10, 20)" and d.step == 20
    assert d.direction == "lower" and d.values == (5.0 - 1.0, 6.0 - 1.1, 7.0 - 0.9)
    assert d.baseline == (5.0, 6.0, 7.0)


BASE_CURVE = [(10, 1.0), (20, 0.8), (30, 0.6)]  # reaches its final 0.6 at step 30


def reaching(step):
    """A held-out curve that first reaches 0.6 at ``step`` (never when None)."""
    return [(s, 0.6 if step is not None and s >= step else 0.9) for s in (10, 20, 30)]


def test_convergence_uses_the_level_it_is_given():
    runs = []
    for seed, step in enumerate((10, 20, 20, 10)):
        runs += pair(seed, {HELD: reaching(step)}, {HELD: BASE_CURVE})
    conv = compare_runs(runs, level=0.9, convergence_metrics=(HELD,)).convergence[0]
    assert conv.seeds == (0, 1, 2, 3) and conv.steps == (10, 20, 20, 10) and conv.verdict == "faster"
    assert conv.interval_level == pytest.approx(0.9) and conv.family_size == 1
    assert conv.step_interval == pytest.approx(t_interval([10, 20, 20, 10], 0.9)[1])
    assert conv.saved_interval == pytest.approx(t_interval([20, 10, 10, 20], 0.9)[1])


def test_convergence_skips_a_seed_and_goes_on():
    # seed 0: held-out inputs differ; seed 1: the strategy logged no curve; seed 2: the baseline logged one point
    runs = pair(0, {HELD: reaching(10)}, {HELD: BASE_CURVE}, fingerprints=("a", "b"))
    runs += pair(1, {HELD: [], FID: [(30, 1.0)]}, {HELD: BASE_CURVE, FID: [(30, 1.0)]})
    runs += pair(2, {HELD: reaching(10)}, {HELD: [(30, 0.6)]})
    for seed, step in ((3, 10), (4, 20), (5, 10)):
        runs += pair(seed, {HELD: reaching(step)}, {HELD: BASE_CURVE})
    conv = compare_runs(runs, convergence_metrics=(HELD,)).convergence[0]
    assert conv.seeds == (3, 4, 5) and conv.baseline_steps == (30, 30, 30)


def test_convergence_needs_two_baseline_points_and_names_the_seeds_that_never_reach():
    two = [(10, 1.0), (20, 0.6)]
    runs = []
    for seed, step in enumerate((None, 10, 20)):
        runs += pair(seed, {HELD: [(10, 0.6 if step else 0.9), (20, 0.6 if step else 0.9)]}, {HELD: two})
    conv = compare_runs(runs, convergence_metrics=(HELD,)).convergence[0]
    assert conv.seeds == (0, 1, 2) and conv.steps == (None, 10, 10)
    assert (conv.verdict, conv.reason) == (NOT_RESOLVED, "not reached in 1 of 3 seeds")


def test_convergence_slower_than_the_baseline():
    runs = []
    for seed in range(6):
        late = 40 if seed % 2 else 50
        curve = [(s, 0.6 if s >= late else 0.9) for s in (10, 20, 30, 40, 50)]
        runs += pair(seed, {HELD: curve}, {HELD: BASE_CURVE})
    conv = compare_runs(runs, convergence_metrics=(HELD,)).convergence[0]
    assert conv.mean_saved == pytest.approx(-15.0) and (conv.verdict, conv.reason) == ("slower", "")


def test_convergence_rows_of_a_setting_are_one_family():
    runs = []
    for seed, step in enumerate((10, 20, 20)):
        runs += pair(seed, {HELD: reaching(step), FID: [(10, 9.0), (20, 8.0), (30, 7.0)]},
                     {HELD: BASE_CURVE, FID: [(10, 9.0), (20, 8.0), (30, 7.0)]})
    convs = compare_runs(runs).convergence
    assert [(c.metric, c.family_size, c.correction) for c in convs] == [(HELD, 2, "Bonferroni"),
                                                                        (FID, 2, "Bonferroni")]
    assert all(c.interval_level == pytest.approx(0.975) for c in convs)


def diff(verdict, setting=(), reason=""):
    return PairedDifference("dtr-a4", setting, FID, "lower", 10, (0, 1, 2), (1.0,) * 3, (0.5,) * 3, -0.5,
                            (-0.6, -0.4), verdict, reason)


def test_claim_details_name_every_axis_and_mixed_verdicts():
    claim = Claim("DTR better on FID", "dtr", FID, "better")
    both = check_claims([claim], [diff("better", (("a", "1"), ("b", "2")))], [])[0]
    assert (both.status, both.detail) == ("confirmed", "better at `dtr-a4`, a=1, b=2")
    mixed = check_claims([claim], [diff("better", (("a", "1"),)), diff("worse", (("a", "2"),))], [])[0]
    assert (mixed.status, mixed.detail) == ("mixed", "better at `dtr-a4`, a=1; worse at `dtr-a4`, a=2")
    none = check_claims([Claim("random worse", "random", FID, "worse")], [diff("better")], [])[0]
    assert (none.status, none.detail) == ("not tested", "no `random` run with this metric")


def test_unknown_metrics_are_refused_with_the_known_ones_listed():
    with pytest.raises(ValueError) as primary:
        compare_runs([], primary="mystery")
    assert str(primary.value) == f"primary metric 'mystery': direction unknown (known: {KNOWN}, heldout/band<k>)"
    with pytest.raises(ValueError) as metric:
        compare_runs([], metrics=["mystery"])
    assert str(metric.value) == f"metric 'mystery': direction unknown (known: {KNOWN}, heldout/band<k>)"


def test_another_axis_and_baseline_are_used_and_recorded():
    runs = []
    for seed, d in enumerate((0.10, 0.11, 0.12)):
        runs += pair(seed, {ACC: [(10, 0.5 + d)]}, {ACC: [(10, 0.5)]}, axis="mode", base="uniform")
    result = compare_runs(runs, axis="mode", baseline="uniform", primary=ACC)
    assert (result.axis, result.baseline, result.primary, result.skipped) == ("mode", "uniform", ACC, [])
    assert [(d.strategy, d.verdict) for d in result.differences] == [("dtr", "better")]


def test_metrics_come_in_registry_order_then_bands_by_number_and_need_both_runs():
    names = [PREC, "heldout/band10", FID, "heldout/band2", HELD]
    runs = []
    for seed in range(3):
        runs += pair(seed, {m: [(10, 1.0 + seed)] for m in [*names, ACC]},  # the baseline has no accuracy
                     {m: [(10, 1.0)] for m in names})
    assert [d.metric for d in compare_runs(runs).differences] == [HELD, FID, PREC, "heldout/band2",
                                                                  "heldout/band10"]


def test_pairing_skips_runs_without_one_baseline_and_says_why():
    from dtr_plugins.experiments.compare import family, pair_runs

    assert family("dtr-a4-b0.8-sinput") == "dtr" and family("vanilla") == "vanilla"
    axes = {"process": "flow"}
    runs = [RunRecord("dtr0", 0, {"routing": "dtr-a4", **axes}), RunRecord("van0a", 0, {"routing": "vanilla", **axes}),
            RunRecord("van0b", 0, {"routing": "vanilla", **axes}),  # two baselines for seed 0: ambiguous
            RunRecord("dtr1", 1, {"routing": "dtr-a4", **axes}),  # no baseline for seed 1
            RunRecord("dtr2", 2, {"routing": "dtr-a4"}), RunRecord("van2", 2, {"routing": "vanilla"})]
    groups, skipped = pair_runs(runs)
    assert skipped == [("dtr0", "2 `vanilla` runs match (seed 0): ambiguous baseline"),
                       ("dtr1", "no `vanilla` run with seed 1 and process=flow")]
    assert list(groups) == [("dtr-a4", ())] and [(a.id, b.id) for a, b in groups[("dtr-a4", ())]] == [("dtr2", "van2")]
    _, skipped = pair_runs([RunRecord("dtr3", 3, {"routing": "dtr-a4"})])
    assert skipped == [("dtr3", "no `vanilla` run with seed 3")]
    _, skipped = pair_runs([RunRecord("d", 0, {"routing": "dtr", "a": "1", "b": "2"})])
    assert skipped == [("d", "no `vanilla` run with seed 0 and a=1, b=2")]
