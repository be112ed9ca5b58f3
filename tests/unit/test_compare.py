"""Paired comparisons on a hand-written suite folder: baseline matching, intervals, verdicts, convergence."""
import json
from dataclasses import replace

import pytest

from dtr_plugins.experiments.compare import (
    NOISY_HALF,
    NOT_RESOLVABLE,
    NOT_RESOLVED,
    RunRecord,
    compare_runs,
    family,
    first_reach,
    pair_runs,
    t_interval,
)
from dtr_plugins.experiments.compare_markdown import render_comparison_markdown
from dtr_plugins.experiments.compare_records import axes_of, runs_from_suite

from ..conftest import write

FID = "frechet_inception_distance"
ROUTINGS = {"vanilla": {"name": "vanilla"}, "dtr-a4-b0.8": {"name": "dtr", "alpha": 4.0, "beta": 0.8},
            "random-b0.8-s0": {"name": "random", "beta": 0.8, "seed": 0}}
SEED_NOISE = [0.0, 3.0, -2.0, 4.0, -1.0]  # FID moves this much between seeds: far more than between strategies
DTR_JITTER = [0.1, -0.1, 0.05, 0.0, -0.05]  # sums to 0: DTR is exactly 2 below its pair on average
RANDOM_NOISE = [1.0, -1.2, 0.8, -0.9, 0.4]  # sums to 0.1: +0.05 + 0.02 on average, lost in the noise
VANILLA_LOSS = [1.0, 0.8, 0.7, 0.65]  # held-out total at steps 100..400
DTR_LOSS = {0: [0.9, 0.7, 0.64, 0.6], 1: [0.9, 0.7, 0.64, 0.6], 2: [0.9, 0.64, 0.6, 0.58],
            3: [0.9, 0.7, 0.64, 0.6], 4: [0.9, 0.7, 0.66, 0.6]}  # reaches vanilla's 0.65 at 300, 300, 200, 300, 400


def fid_of(routing, weighting, seed):
    base = (20.0 if weighting == "constant" else 15.0) + SEED_NOISE[seed % 5]
    if routing == "vanilla":
        return base
    if routing.startswith("dtr"):
        return base - 2.0 + DTR_JITTER[seed % 5]
    return base + 0.05 + RANDOM_NOISE[seed % 5]


def write_run(root, runs, rid, routing, weighting, seed, *, state="done", fingerprint="f" * 64, fid=None):
    assignment = {"routing": ROUTINGS[routing], "loss_weighting": {"name": weighting}, "seed": seed}
    runs.append({"id": rid, "group": rid.rsplit("__", 1)[0], "assignment": assignment})
    d = root / rid
    write(d / "config.yaml", f"name: {rid}\nseed: {seed}\nrouting: {json.dumps(ROUTINGS[routing])}\n")
    write(d / "status.json", json.dumps({"state": state, "seconds": 12.5, "resumed": False, "threads": 1}))
    loss = DTR_LOSS[seed % 5] if routing.startswith("dtr") else [v + 0.1 for v in VANILLA_LOSS] \
        if routing.startswith("random") else VANILLA_LOSS
    if weighting == "min_snr":
        loss = [v - 0.05 for v in loss]
    lines = []
    for i, step in enumerate((100, 200, 300, 400)):
        lines.append({"step": step, "loss": 0.5, "loss_bucket": [0.1] * 10})
        body = {f"band{b}": loss[i] * (b + 1) / 5.5 for b in range(10)}
        body.update(total=loss[i], term="mse", weights="ema", fingerprint=fingerprint)
        lines.append({"step": step, "heldout": body})
    value = fid if fid is not None else fid_of(routing, weighting, seed)
    lines.append({"step": 400, "eval": {FID: value, "precision": 0.7, "feature_extractor": "digits-classifier"}})
    write(d / "metrics.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")


def crafted_suite(root, seeds=range(5), extra=True):
    """vanilla / dtr / random x constant / min_snr x seeds, plus a dtr run whose seed has no vanilla run
    and a failed run."""
    runs = []
    for routing in ROUTINGS:
        for weighting in ("constant", "min_snr"):
            for seed in seeds:
                write_run(root, runs, f"{routing}__{weighting}__seed{seed}", routing, weighting, seed)
    if extra:
        write_run(root, runs, "dtr-a4-b0.8__constant__seed9", "dtr-a4-b0.8", "constant", 9)
        write_run(root, runs, "random-b0.8-s0__constant__seed7", "random-b0.8-s0", "constant", 7, state="failed")
    write(root / "suite.json", json.dumps({"name": "crafted", "runs": runs}))
    return root


def find(result, strategy, weighting, metric):
    return next(d for d in result.differences if d.strategy == strategy and d.metric == metric
                and dict(d.setting) == {"loss_weighting": weighting})


def test_t_interval_against_the_textbook_value():
    mean, (low, high) = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * (2.5 ** 0.5) / 5 ** 0.5  # t_{0.975, 4} * sd / sqrt(n)
    assert mean == 3.0 and low == pytest.approx(3 - half) and high == pytest.approx(3 + half)
    assert t_interval([4.0]) == (4.0, None)


def test_suite_records_pair_with_the_vanilla_run_of_the_same_setting_and_seed(tmp_path):
    runs = runs_from_suite(crafted_suite(tmp_path / "s"))
    assert runs[0].axes == {"routing": "vanilla", "loss_weighting": "constant"} and runs[0].seed == 0
    assert runs[10].axes["routing"] == "dtr-a4-b0.8" and runs[10].heldout_fingerprint == "f" * 64
    assert runs[10].curves["heldout/total"] == [(100, 0.9), (200, 0.7), (300, 0.64), (400, 0.6)]
    groups, skipped = pair_runs(runs)
    pairs = groups[("dtr-a4-b0.8", (("loss_weighting", "min_snr"),))]
    assert [(a.id, b.id) for a, b in pairs] == [(f"dtr-a4-b0.8__min_snr__seed{s}", f"vanilla__min_snr__seed{s}")
                                                for s in range(5)]  # never vanilla + constant
    assert dict(skipped) == {"dtr-a4-b0.8__constant__seed9": "no `vanilla` run with seed 9 and loss_weighting=constant",
                             "random-b0.8-s0__constant__seed7": "status failed, not done"}


def test_large_difference_resolves_tiny_noisy_one_does_not(tmp_path):
    result = compare_runs(runs_from_suite(crafted_suite(tmp_path / "s")))
    assert result.max_seeds == 5 and result.method == "t"
    for weighting in ("constant", "min_snr"):
        dtr = find(result, "dtr-a4-b0.8", weighting, FID)
        assert dtr.seeds == (0, 1, 2, 3, 4) and dtr.step == 400
        assert dtr.mean == pytest.approx(-2.0)  # against vanilla + the same weighting (else -7 or +3)
        assert dtr.interval[1] < 0 and dtr.verdict == "better"
        rnd = find(result, "random-b0.8-s0", weighting, FID)
        assert rnd.mean == pytest.approx(0.07) and rnd.interval[0] < 0 < rnd.interval[1]
        assert rnd.verdict == NOT_RESOLVED and rnd.reason == "interval contains 0"
        precision = find(result, "dtr-a4-b0.8", weighting, "precision")  # identical: 0 +- 0
        assert (precision.verdict, precision.reason) == (NOT_RESOLVABLE, "no spread")
        held = find(result, "random-b0.8-s0", weighting, "heldout/total")  # +0.1 in every seed: no spread either
        assert (held.verdict, held.reason) == (NOT_RESOLVABLE, "no spread") and held.mean == pytest.approx(0.1)
    assert find(result, "dtr-a4-b0.8", "constant", "heldout/total").mean == pytest.approx(0.596 - 0.65)
    assert find(result, "dtr-a4-b0.8", "constant", "heldout/band9").verdict == "better"
    # the unmatched and the failed run are in no pair
    assert all(d.seeds != (9,) for d in result.differences)
    claims = {c.claim.text: c for c in result.claims}
    assert claims["DTR better than vanilla on FID"].status == "confirmed"
    assert claims["DTR better than vanilla on FID"].detail == \
        "better at `dtr-a4-b0.8`, loss_weighting=constant; better at `dtr-a4-b0.8`, loss_weighting=min_snr"
    assert claims["random routing worse than vanilla on FID"].status == NOT_RESOLVED
    assert claims["random routing worse than vanilla on FID"].detail.startswith(
        "not resolved (interval contains 0) at `random-b0.8-s0`, loss_weighting=constant; ")
    assert claims["random routing worse than vanilla on held-out loss"].status == NOT_RESOLVED  # no spread


def test_convergence_step_per_seed_and_its_interval(tmp_path):
    result = compare_runs(runs_from_suite(crafted_suite(tmp_path / "s")))
    conv = next(c for c in result.convergence if c.strategy == "dtr-a4-b0.8" and c.metric == "heldout/total"
                and dict(c.setting) == {"loss_weighting": "constant"})
    assert conv.steps == (300, 300, 200, 300, 400) and conv.baseline_steps == (400,) * 5
    assert conv.targets == (0.65,) * 5 and conv.mean_step == 300 and conv.mean_saved == 100
    assert conv.saved_interval[0] > 0 and conv.verdict == "faster"
    never = next(c for c in result.convergence if c.strategy.startswith("random") and c.metric == "heldout/total")
    assert not any(c.metric == FID for c in result.convergence)  # FID logged once: no convergence to speak of
    assert never.steps == (None,) * 5 and never.verdict == NOT_RESOLVED
    assert never.reason == "not reached in 5 of 5 seeds"
    assert first_reach([(1, 3.0), (2, 1.0), (3, 2.0)], 2.0, "lower") == 2
    assert first_reach([(1, 0.1), (2, 0.5)], 0.4, "higher") == 2 and first_reach([(1, 0.1)], 0.4, "higher") is None
    text = render_comparison_markdown(result)
    assert "DTR converges faster than vanilla (held-out loss): **confirmed**" in text


def test_one_seed_is_never_resolved_and_the_report_says_why(tmp_path):
    result = compare_runs(runs_from_suite(crafted_suite(tmp_path / "s", seeds=[0], extra=False)))
    assert result.max_seeds == 1 and result.differences
    assert all(d.verdict == NOT_RESOLVABLE and d.interval is None and d.reason == "1 pair"
               for d in result.differences)
    assert all(c.verdict in (NOT_RESOLVABLE, NOT_RESOLVED) for c in result.convergence)
    assert {c.status for c in result.claims} == {NOT_RESOLVED}
    text = render_comparison_markdown(result)
    assert "1 seed per setting: every verdict is *not resolvable*" in text
    assert "Student-t interval" in text and "**better**" not in text and "**worse**" not in text
    row = next(line for line in text.splitlines() if line.startswith("| `dtr-a4-b0.8` | loss_weighting=constant | FID"))
    assert row == "| `dtr-a4-b0.8` | loss_weighting=constant | FID ↓ | 1 | 20 | -1.9 (-9.5%) | — | " \
                  "Bonferroni, family of 2, 97.5% | *not resolvable* (1 pair) |"


def test_markdown_rows_and_direction_check(tmp_path):
    text = render_comparison_markdown(compare_runs(runs_from_suite(crafted_suite(tmp_path / "s"))))
    assert "DTR better than vanilla on FID: **confirmed** (better at `dtr-a4-b0.8`, loss_weighting=constant; " \
           "better at `dtr-a4-b0.8`, loss_weighting=min_snr); DTR better than vanilla on held-out loss: " \
           "**confirmed**" in text
    row = next(line for line in text.splitlines() if line.startswith("| `dtr-a4-b0.8` | loss_weighting=min_snr | FID"))
    assert "| 5 | 15.8 | -2 (-12.7%) | [" in row and row.endswith("| **better** |")
    assert "### Held-out loss per noise band" in text and "### Convergence" in text
    assert "- `dtr-a4-b0.8__constant__seed9`: no `vanilla` run with seed 9 and loss_weighting=constant" in text


def test_heldout_metrics_need_identical_inputs(tmp_path):
    root = crafted_suite(tmp_path / "s", seeds=[0, 1], extra=False)
    runs = []  # rewrite seed 1's DTR run as scored on other held-out inputs
    index = json.loads((root / "suite.json").read_text())
    write_run(root, runs, "dtr-a4-b0.8__constant__seed1", "dtr-a4-b0.8", "constant", 1, fingerprint="0" * 64)
    result = compare_runs(runs_from_suite(root))
    assert len(index["runs"]) == 12
    held = find(result, "dtr-a4-b0.8", "constant", "heldout/total")
    assert held.seeds == (0,) and "seed 1: held-out inputs differ from the baseline's" in held.reason
    assert find(result, "dtr-a4-b0.8", "constant", FID).seeds == (0, 1)  # other metrics still pair


def test_pairs_compare_the_same_final_step_and_known_metrics_only():
    runs = [RunRecord("v", 0, {"routing": "vanilla"}, {FID: [(10, 5.0)]}),
            RunRecord("d", 0, {"routing": "dtr"}, {FID: [(10, 4.0)]}),
            RunRecord("late", 0, {"routing": "random"}, {FID: [(20, 4.0)]})]
    result = compare_runs(runs)
    assert [(d.strategy, d.mean) for d in result.differences] == [("dtr", -1.0), ("random", None)]
    assert result.differences[1].reason == "seed 0: final steps differ (20 vs 10)"
    with pytest.raises(ValueError, match="direction unknown"):
        compare_runs(runs, metrics=["mystery"])


def test_axis_labels_from_assignment_ids_and_config():
    assert axes_of("dtr-a4-b0.8__seed0", {"routing": {"name": "dtr", "alpha": 4.0, "beta": 0.8}, "seed": 0}, {}) == {
        "routing": "dtr-a4-b0.8"}
    assert axes_of("namedtr__lr0.001", {"routing.name": "dtr", "train.lr": 0.001}, {}) == {
        "routing": "dtr", "train.lr": "0.001"}
    assert axes_of("base", {}, {"routing": {"name": "vanilla"}}) == {"routing": "vanilla"}


def test_a_varied_token_router_is_part_of_the_strategy_compared_with_plain_vanilla():
    tread = {"name": "tread", "ratio": 0.5, "start": 1, "end": 2}
    assignment = {"seed": 0, "routing": {"name": "dtr", "alpha": 4.0, "beta": 0.8}, "token_routing": tread}
    assert axes_of("seed0__dtr-a4-b0.8__tread", assignment, {}) == {"routing": "dtr-a4-b0.8+tread"}
    assert axes_of("seed0__vanilla__none", {**assignment, "routing": {"name": "vanilla"}, "token_routing": None},
                   {}) == {"routing": "vanilla"}
    assert family("dtr-a4-b0.8+tread") == "dtr+tread" and family("vanilla+tread") == "vanilla+tread"
    runs = [RunRecord("v", 0, {"routing": "vanilla"}, {FID: [(10, 5.0)]}),
            RunRecord("t", 0, {"routing": "vanilla+tread"}, {FID: [(10, 4.5)]}),
            RunRecord("dt", 0, {"routing": "dtr-a4-b0.8+tread"}, {FID: [(10, 4.0)]})]
    result = compare_runs(runs)
    assert [(d.strategy, d.mean) for d in result.differences] == [("vanilla+tread", -0.5),
                                                                 ("dtr-a4-b0.8+tread", -1.0)]
    dtr_claims = [c.status for c in result.claims if c.claim.strategy == "dtr"]
    assert dtr_claims == ["not tested"] * 4  # DTR + TREAD is not DTR


def test_plots_of_bands_and_forest(tmp_path):
    from PIL import Image

    from dtr_plugins.experiments.compare_plots import group_curves, plot_forest, plot_heldout_bands

    runs = runs_from_suite(crafted_suite(tmp_path / "s"))
    groups = group_curves(runs)
    assert len(groups["vanilla, min_snr"]) == 5 and "random-b0.8-s0, constant" in groups  # the failed run is left out
    assert len(groups["random-b0.8-s0, constant"]) == 5
    bands = plot_heldout_bands(groups, tmp_path / "plots" / "heldout_bands.png")
    forest = plot_forest(compare_runs(runs), tmp_path / "plots" / "forest.png")
    one = plot_forest(compare_runs(runs_from_suite(crafted_suite(tmp_path / "one", seeds=[0], extra=False))),
                      tmp_path / "plots" / "forest_one_seed.png")
    for path in (bands, forest, one):
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) > 300
    assert not list((tmp_path / "plots").glob("*.tmp"))
    with pytest.raises(ValueError, match="no held-out"):
        plot_heldout_bands({"x": [{FID: [(1, 2.0)]}]}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="no paired"):
        plot_forest(compare_runs([]), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_a_suite_without_the_axis_says_so():
    result = compare_runs([RunRecord("lr1", 0, {"train.lr": "1"}, {FID: [(10, 5.0)]})])
    text = render_comparison_markdown(result)
    assert "No pairs: the suite does not vary `routing`." in text
    assert {c.status for c in result.claims} == {"not tested"}


def _banded(rid, routing, seed, bands, fingerprint="f" * 64):
    curves = {f"heldout/band{b}": [(100, 0.5), (200, v)] for b, v in enumerate(bands)}
    curves["heldout/total"] = [(100, 1.0), (200, sum(bands) / len(bands))]
    return RunRecord(id=rid, seed=seed, axes={"routing": routing}, curves=curves, heldout_fingerprint=fingerprint,
                     group=rid.split("__")[0], routing=routing.split("-")[0])


def test_where_the_gain_lies_noisier_half_against_cleaner_half_per_pair():
    """The claim "DTR's gain lies in the noisy bands": per pair, the mean relative difference over the noisier
    half of the bands (the higher band indices) minus that over the cleaner half; the middle band of an odd
    count is left out; computed by hand here."""
    base = [0.4, 0.2, 0.1, 0.04, 0.01]  # band 0 the cleanest: the largest epsilon loss
    runs, expected = [], []
    for seed, (clean_gain, noisy_gain) in enumerate([(0.0, -0.10), (0.01, -0.08), (-0.01, -0.12), (0.0, -0.09)]):
        dtr = [base[0] * (1 + clean_gain), base[1] * (1 + clean_gain), base[2] * 1.5,  # middle band: ignored
               base[3] * (1 + noisy_gain), base[4] * (1 + noisy_gain)]
        runs += [_banded(f"vanilla__seed{seed}", "vanilla", seed, base),
                 _banded(f"dtr-a4-b0.8__seed{seed}", "dtr-a4-b0.8", seed, dtr)]
        expected.append(noisy_gain - clean_gain)
    result = compare_runs(runs)
    (row,) = result.emphasis
    mean, interval = t_interval(expected)
    assert row.metric == NOISY_HALF and row.seeds == (0, 1, 2, 3)
    assert row.mean == pytest.approx(mean, abs=1e-12) and row.interval == pytest.approx(interval, abs=1e-12)
    assert row.verdict == "better"
    claim = next(c for c in result.claims if c.claim.metric == NOISY_HALF)
    assert claim.status == "confirmed"
    assert "noisier half -9.75%, cleaner half +0.00% against the baseline, -9.75 points, 95% interval [" in claim.detail
    assert NOISY_HALF not in {d.metric for d in result.differences}  # a claim's statistic, not a band-table row
    # the gain in the clean bands instead: the claim is contradicted
    flipped = [replace(r, curves={**r.curves, **{f"heldout/band{b}": r.curves[f"heldout/band{4 - b}"]
                                                 for b in range(5)}}) for r in runs]
    assert next(c for c in compare_runs(flipped).claims if c.claim.metric == NOISY_HALF).status == "contradicted"
    # two pairs give no verdict; held-out inputs that differ give no pair
    assert compare_runs(runs[:4]).emphasis[0].verdict == NOT_RESOLVABLE
    other = [replace(r, heldout_fingerprint="e" * 64) if r.routing == "dtr" else r for r in runs]
    assert compare_runs(other).emphasis == []
