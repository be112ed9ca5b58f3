"""Multiplicity, verdicts from too little data, and the direction check over every setting."""
import numpy as np
import pytest

from dtr_plugins.experiments.compare import (
    NOT_RESOLVABLE,
    NOT_RESOLVED,
    RunRecord,
    adjusted_level,
    compare_runs,
    t_interval,
)
from dtr_plugins.experiments.compare_markdown import render_comparison_markdown

FID, ACC, HELD = "frechet_inception_distance", "class_accuracy", "heldout/total"
SECONDARY = (FID, "precision", "recall", ACC, "kernel_inception_distance_mean")


def runs_from(diffs: dict[str, list[float]], *, strategy="dtr", setting=None, base=1.0):
    """A vanilla and a ``strategy`` run per seed; ``diffs[metric][seed]`` = strategy - vanilla."""
    out = []
    seeds = len(next(iter(diffs.values())))
    axes = dict(setting or {})
    for seed in range(seeds):
        out.append(RunRecord(f"v{seed}{axes}", seed, {"routing": "vanilla", **axes},
                             {m: [(10, base + seed)] for m in diffs}))
        out.append(RunRecord(f"{strategy}{seed}{axes}", seed, {"routing": strategy, **axes},
                             {m: [(10, base + seed + d[seed])] for m, d in diffs.items()}))
    return out


def row(result, metric, strategy="dtr"):
    return next(d for d in result.differences if d.metric == metric and d.strategy == strategy)


def test_primary_uses_the_plain_interval_others_a_bonferroni_family():
    # the same differences under every metric: resolved at 95% (t with 2 df) but not at 1 - 0.05/5
    same = [0.04, 0.06, 0.08]
    _, (low, _high) = t_interval(same, 0.95)
    _, (low5, _high5) = t_interval(same, adjusted_level(0.95, 5))
    assert low > 0 > low5  # the example is what it claims to be
    result = compare_runs(runs_from({HELD: same, **dict.fromkeys(SECONDARY, same)}))
    held = row(result, HELD)
    assert (held.family, held.family_size, held.correction, held.interval_level) == ("primary", 1, "none", 0.95)
    assert held.verdict == "worse" and held.interval[0] == pytest.approx(low)
    acc = row(result, ACC)
    assert (acc.family, acc.family_size, acc.correction) == ("other metrics", 5, "Bonferroni")
    assert acc.interval_level == pytest.approx(0.99) and acc.interval[0] == pytest.approx(low5)
    assert acc.verdict == NOT_RESOLVED  # "better" at the plain 95%
    text = render_comparison_markdown(result)
    line = next(s for s in text.splitlines() if "| class accuracy ↑ |" in s)
    assert "| Bonferroni, family of 5, 99% | *not resolved* (interval contains 0) |" in line
    assert "| primary, 95% | **worse** |" in next(s for s in text.splitlines() if "| held-out loss ↓ |" in s)


def test_another_primary_moves_the_plain_interval():
    same = [0.04, 0.06, 0.08]
    result = compare_runs(runs_from({HELD: same, ACC: same}), primary=ACC)
    assert row(result, ACC).family == "primary" and row(result, ACC).verdict == "better"
    assert row(result, HELD).family_size == 1 and row(result, HELD).family == "other metrics"
    with pytest.raises(ValueError, match="primary metric 'mystery'"):
        compare_runs(runs_from({HELD: same}), primary="mystery")


def test_bands_are_one_family_named_in_the_band_table():
    bands = {f"heldout/band{b}": [0.04, 0.06, 0.08] for b in range(10)}
    result = compare_runs(runs_from({HELD: [0.04, 0.06, 0.08], **bands}))
    band = row(result, "heldout/band3")
    assert (band.family, band.family_size) == ("noise bands", 10) and band.interval_level == pytest.approx(0.995)
    assert band.verdict == NOT_RESOLVED
    assert "one family: Bonferroni, family of 10, 99.5%." in render_comparison_markdown(result)


def test_two_pairs_or_no_spread_give_no_verdict_word():
    two = compare_runs(runs_from({ACC: [-0.01, -0.01]}), primary=ACC)  # 0.125 vs 0.115 in both pairs
    d = row(two, ACC)
    assert (d.verdict, d.reason) == (NOT_RESOLVABLE, "2 pairs") and d.interval == (pytest.approx(-0.01),) * 2
    flat = row(compare_runs(runs_from({ACC: [-0.01] * 4}), primary=ACC), ACC)
    assert (flat.verdict, flat.reason) == (NOT_RESOLVABLE, "no spread")
    text = render_comparison_markdown(two)
    assert "**worse**" not in text and "*not resolvable* (2 pairs)" in text


def test_forest_plot_draws_no_verdict_for_an_unresolvable_row(tmp_path):
    from PIL import Image

    from dtr_plugins.experiments.compare_plots import plot_forest

    path = plot_forest(compare_runs(runs_from({ACC: [-0.01, -0.01]}), primary=ACC), tmp_path / "f.png")
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    assert not ((rgb[..., 0] > 180) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).any()  # no red (*worse*)


def test_direction_check_is_confirmed_only_when_every_setting_agrees():
    worse = [2.0, 3.0, 2.5]
    lower = [-0.5, 0.4, -0.9]  # flow matching: lower on average, not resolved
    runs = (runs_from({FID: worse}, strategy="random", setting={"process": "gaussian"})
            + runs_from({FID: lower}, strategy="random", setting={"process": "flow_matching"}))
    result = compare_runs(runs, primary=FID)
    claim = next(c for c in result.claims if c.claim.text == "random routing worse than vanilla on FID")
    assert claim.status == "mixed"
    assert "worse at `random`, process=gaussian" in claim.detail
    assert "not resolved (interval contains 0) at `random`, process=flow_matching" in claim.detail
    both = compare_runs(runs_from({FID: worse}, strategy="random", setting={"process": "gaussian"})
                        + runs_from({FID: worse}, strategy="random", setting={"process": "flow_matching"}),
                        primary=FID)
    assert next(c for c in both.claims if c.claim.metric == FID and c.claim.strategy == "random").status == "confirmed"
    against = compare_runs(runs_from({FID: [-w for w in worse]}, strategy="random"), primary=FID)
    assert next(c for c in against.claims if c.claim.metric == FID and c.claim.strategy == "random").status == \
        "contradicted"


def test_a_suite_file_declares_its_primary_metric(tmp_path):
    from pathlib import Path

    from dtr_plugins.core.errors import ConfigError
    from dtr_plugins.experiments.suite import load_suite

    quickstart = Path(__file__).resolve().parents[2] / "configs" / "suites" / "quickstart.yaml"
    base = quickstart.parent.parent / "dit_digits.yaml"
    text = quickstart.read_text().replace("base: ../dit_digits.yaml", f"base: {base}")
    (tmp_path / "ok.yaml").write_text(text + "\nprimary: class_accuracy\n")
    assert load_suite(tmp_path / "ok.yaml").primary == "class_accuracy"
    assert load_suite(quickstart).primary == HELD
    (tmp_path / "bad.yaml").write_text(text + "\nprimary: mystery\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: primary: 'mystery' is not a compared metric \(allowed: "):
        load_suite(tmp_path / "bad.yaml")


def test_the_primary_comparisons_of_several_strategies_are_one_bonferroni_family():
    """One strategy: the plain 95%. Five strategies with the same differences: each at 1 - 0.05/5, so a difference
    that one strategy alone resolves is not resolved when it is one of five looks at the same question."""
    same = [0.04, 0.06, 0.08]
    _, (low5, _high5) = t_interval(same, adjusted_level(0.95, 5))
    assert low5 < 0
    runs = runs_from({HELD: same}) + [r for name in ("random", "tss", "switch", "time")
                                      for r in runs_from({HELD: same}, strategy=name) if r.axes["routing"] == name]
    result = compare_runs(runs)
    rows = [d for d in result.differences if d.metric == HELD]
    assert len(rows) == 5 and all(d.family == "primary" and d.family_size == 5 for d in rows)
    assert all(d.interval_level == pytest.approx(0.99) and d.verdict == NOT_RESOLVED for d in rows)
    assert all(d.interval[0] == pytest.approx(low5) for d in rows)
    text = render_comparison_markdown(result)
    line = next(s for s in text.splitlines() if "| held-out loss ↓ |" in s)
    assert "| primary, Bonferroni, family of 5, 99% | *not resolved* (interval contains 0) |" in line
    assert row(compare_runs(runs_from({HELD: same})), HELD).verdict == "worse"  # alone: resolved at 95%
