"""Raw per-run results and `make figures`: README/docs tables equal their rebuild from committed results."""
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from dtr_plugins.core.errors import UserError
from dtr_plugins.experiments.compare import compare_runs
from dtr_plugins.experiments.compare_records import runs_from_suite
from dtr_plugins.experiments.raw_results import (
    REQUIRED,
    export_raw_results,
    read_raw_results,
    records_from_raw,
)

from ..conftest import load_script
from .test_compare import crafted_suite

REPO = Path(__file__).resolve().parents[2]


def figures_module():
    return load_script("figures")


def test_readme_and_docs_equal_their_rebuild_from_committed_results(capsys):
    figures = figures_module()
    assert figures.main(["--check"]) == 0, capsys.readouterr().err
    texts = [d.read_text() for d in figures.documents()]
    blocks = [m["name"] for t in texts for m in figures.MARKER.finditer(t)]
    assert {"routing-overhead-summary", "routing-overhead-cpu", "sampling-sites-gpu", "targets", "speed-summary",
            "bench:results-cpu/train_step_S2", "bench:results-gpu/train_step_B2_compile"} <= set(blocks)
    # the sum of separately timed parts is never presented as the measured overhead
    readme = (REPO / "README.md").read_text()
    assert "+0.26% of a DiT-S/2 block stack" not in readme and "[-2.70%, +4.25%]" in readme


def test_raw_results_round_trip_to_the_same_comparison(tmp_path):
    suite = crafted_suite(tmp_path / "s")
    path = export_raw_results(suite)
    lines = read_raw_results(path)
    assert len(lines) == 32 and all(set(REQUIRED) <= set(x) for x in lines)
    first = lines[0]
    assert first["run_id"] == "vanilla__constant__seed0" and first["seed"] == 0 and first["primary"] == "heldout/total"
    assert first["final"]["heldout/band9"] == pytest.approx(0.65 * 10 / 5.5) and first["final"]["heldout/total"] == 0.65
    assert (first["seconds"], first["resumed"], first["threads"]) == (12.5, False, 1)  # the launcher's status.json
    def compared_fields(records):  # what a comparison reads of a run (the record also carries config and meta)
        return [(r.id, r.seed, dict(r.axes), {k: list(v) for k, v in r.curves.items()}, r.status,
                 r.heldout_fingerprint) for r in records]

    assert compared_fields(records_from_raw(lines)) == compared_fields(runs_from_suite(suite))
    a, b = compare_runs(records_from_raw(lines)), compare_runs(runs_from_suite(suite))
    assert a.differences == b.differences and a.claims == b.claims
    (tmp_path / "bad.jsonl").write_text(json.dumps({"run_id": "x"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl: line 1: missing key 'suite'"):
        read_raw_results(tmp_path / "bad.jsonl")


def committed_crafted_suite(tmp_path: Path) -> tuple[Path, Path]:
    """A repository folder with the crafted suite's raw results committed as ``benchmarks/results-cpu/crafted``."""
    repo = tmp_path / "repo"
    raw = repo / "benchmarks" / "results-cpu" / "crafted" / "runs.jsonl"
    raw.parent.mkdir(parents=True)
    raw.write_text(export_raw_results(crafted_suite(tmp_path / "s")).read_text())
    return repo, raw


def test_a_committed_suite_becomes_a_block_and_stale_blocks_are_found(tmp_path):
    figures = figures_module()
    repo, raw = committed_crafted_suite(tmp_path)
    table = figures.builders(repo)
    assert "suite-cpu-crafted" in table
    doc = "intro\n<!-- figures:suite-cpu-crafted -->\nold numbers\n<!-- /figures:suite-cpu-crafted -->\nend\n"
    new = figures.rebuild(doc, "doc.md", table)
    assert "old numbers" not in new and new.startswith("intro\n<!-- figures:suite-cpu-crafted -->\nFrom `")
    assert "| primary, Bonferroni, family of 4, 98.75% |" in new and "**Direction check**" in new
    assert figures.rebuild(new, "doc.md", table) == new  # a rebuilt block is stable
    with pytest.raises(ValueError, match="doc.md: block figures:gone has no committed source"):
        figures.rebuild("<!-- figures:gone -->\n1.33x\n<!-- /figures:gone -->\n", "doc.md", table)


def test_pictures_beside_a_committed_suite_are_drawn_from_its_runs_jsonl_alone(tmp_path):
    """``make figures`` draws the forest plot and the per-band curves beside ``runs.jsonl`` (the suite folder
    that produced it is gone), and leaves out what the lines cannot show."""
    figures = figures_module()
    repo, raw = committed_crafted_suite(tmp_path)
    drawn = figures.suite_figures(repo)
    names = sorted(p.name for p in drawn)
    assert "paired_differences.png" in names and "heldout_loss_bands.png" in names
    assert all(p.parent == raw.parent and p.stat().st_size > 10_000 for p in drawn)
    only_vanilla = [x for x in read_raw_results(raw) if x["run_id"].startswith("vanilla")]
    raw.write_text("".join(json.dumps(x) + "\n" for x in only_vanilla))
    for p in drawn:
        p.unlink()
    assert "paired_differences.png" not in [p.name for p in figures.suite_figures(repo)]  # nothing to pair


def test_every_committed_benchmark_result_renders_through_its_script():
    """Each ``benchmarks/results-*/*.json`` has a ``bench:`` block source, and it names the script that renders it."""
    figures = figures_module()
    table = figures.builders()
    results = sorted(REPO.glob("benchmarks/results-*/*.json"))
    names = [f"bench:{p.parent.name}/{p.stem}" for p in results if p.stem != "check_targets"]
    assert len(names) >= 15 and set(names) <= set(table)
    for name in names:
        text = table[name]()
        assert text.startswith(f"From `benchmarks/{name[6:]}.json`, rendered by `benchmarks/") and "| " in text
        assert "\n#" not in text  # headings become bold lines: a block never adds a section


def test_a_changed_number_in_a_result_changes_its_block(tmp_path):
    """The block is computed from the JSON: edit one stored time and the rebuilt table shows the new number."""
    figures = figures_module()
    repo = tmp_path / "repo"
    bench = repo / "benchmarks"
    (bench / "results-cpu").mkdir(parents=True)
    for script in ("_common.py", "_published.py", "sample.py", "models.yaml"):
        (bench / script).write_text((REPO / "benchmarks" / script).read_text())
    payload = json.loads((REPO / "benchmarks/results-cpu/sample.json").read_text())
    (bench / "results-cpu" / "sample.json").write_text(json.dumps(payload))
    doc = "<!-- figures:bench:results-cpu/sample -->\nold\n<!-- /figures:bench:results-cpu/sample -->\n"
    before = figures.rebuild(doc, "doc.md", figures.builders(repo))
    row = payload["results"][0]
    assert f"| {row['variant']} | 1 (no guidance) | {row['seconds']['median']:.3f} |" in before
    row["seconds"]["median"] = 123.4567
    row["images_per_s"] = 8 / 123.4567
    (bench / "results-cpu" / "sample.json").write_text(json.dumps(payload))
    after = figures.rebuild(before, "doc.md", figures.builders(repo))
    assert after != before and "| vanilla | 1 (no guidance) | 123.457 | 0.06 |" in after
    assert figures.rebuild(after, "doc.md", figures.builders(repo)) == after  # stable once rebuilt
    # a JSON no script renders is an error, not an empty block
    (bench / "results-cpu" / "mystery.json").write_text("{}")
    with pytest.raises(ValueError, match="mystery.json: no benchmark script renders it"):
        figures.builders(repo)["bench:results-cpu/mystery"]()


def test_recipe_table_measures_spread_time_and_resolution_from_the_raw_lines(tmp_path):
    """The recipe block: wall time from the launcher's status, the SD of paired differences and the half-width
    of their 95% t-interval relative to vanilla's mean, recomputed by hand here."""
    figures = figures_module()
    raw = tmp_path / "runs.jsonl"
    raw.write_text(export_raw_results(crafted_suite(tmp_path / "s")).read_text())
    table = figures.recipe_table(raw)
    lines = [x for x in read_raw_results(raw) if x["status"] == "done"]
    vanilla = {x["seed"]: x["final"]["heldout/total"] for x in lines if x["run_id"].startswith("vanilla__constant")}
    dtr = {x["seed"]: x["final"]["heldout/total"] for x in lines if x["run_id"].startswith("dtr-a4-b0.8__constant")}
    diffs = [dtr[s] - vanilla[s] for s in vanilla]
    compared = len({x["run_id"].rsplit("__seed", 1)[0] for x in lines if not x["run_id"].startswith("vanilla")})
    quantile = float(scipy_stats.t.ppf(1 - 0.05 / compared / 2, 4))  # the primary family: Bonferroni over them
    assert f"smallest resolvable paired difference ({(1 - 0.05 / compared) * 100:.4g}%)" in table
    half = quantile * statistics.stdev(diffs) / 5 ** 0.5 / statistics.fmean(vanilla.values())
    row = next(r for r in table.splitlines() if r.startswith("| dtr-a4-b0.8 (loss_weighting=constant) |"))
    assert f"±{half:.2%} of vanilla's mean (5 pairs)" in row and "0.2 min (6 unresumed runs, threads 1)" in row
    reference = next(r for r in table.splitlines() if r.startswith("| vanilla (loss_weighting=constant) |"))
    assert reference.count("(reference)") == 2
    # the suite's time: per strategy and setting the median of its unresumed runs x its runs, summed; one slow run
    # moves a mean but not the median
    slow = [json.loads(line) for line in raw.read_text().splitlines()]
    slow[0]["seconds"] = 1000.0
    raw.write_text("".join(json.dumps(x) + "\n" for x in slow))
    done = [x for x in read_raw_results(raw) if x["status"] == "done"]
    groups: dict[str, list[float]] = {}
    for x in done:
        groups.setdefault(x["run_id"].rsplit("__seed", 1)[0], []).append(x["seconds"])
    total = sum(statistics.median(v) * len(v) for v in groups.values())
    assert total < sum(x["seconds"] for x in done)
    assert figures.recipe_table(raw).rstrip().endswith(
        f"{total / 3600:.2g} run-hours of one thread each, so about {total / 7200:.2g} h on 2 cores with "
        f"`--parallel 2`.")
    # committed part way: the estimate is still of the whole suite, each group's median x its planned runs
    planned = {x["group"]: 2 * len(groups[x["run_id"].rsplit("__seed", 1)[0]]) for x in done}
    whole = sum(statistics.median(v) * 2 * len(v) for v in groups.values())
    assert figures.recipe_table(raw, planned).rstrip().endswith(
        f"The whole suite ({2 * len(done)} planned runs, {len(done)} of them finished), estimated from these "
        f"medians (median x runs, summed): {whole / 3600:.2g} run-hours of one thread each, so about "
        f"{whole / 7200:.2g} h on 2 cores with `--parallel 2`.")


def test_suite_summary_states_each_strategy_and_the_paired_verdict_of_the_primary_metric(tmp_path):
    """The summary block: per strategy and setting the mean ± SD over seeds of the primary metric, recomputed by
    hand here, and each strategy's paired difference, interval and verdict as the comparison gives them."""
    figures = figures_module()
    raw = tmp_path / "runs.jsonl"
    raw.write_text(export_raw_results(crafted_suite(tmp_path / "s")).read_text())
    text = figures.suite_summary(raw)
    lines = [x for x in read_raw_results(raw) if x["status"] == "done"]
    vanilla = [x["final"]["heldout/total"] for x in lines if x["run_id"].startswith("vanilla__constant")]
    assert text.startswith(f"**held-out loss** (the primary metric; `{raw}`")
    assert (f"vanilla (loss_weighting=constant) {statistics.fmean(vanilla):.3g} ± {statistics.stdev(vanilla):.2g} "
            f"(5 runs)") in text
    result = compare_runs(records_from_raw(lines), primary="heldout/total")
    for d in result.differences:
        if d.metric == "heldout/total" and d.mean is not None:
            setting = ", ".join(f"{k}={v}" for k, v in d.setting)
            m = d.family_size  # the primary comparisons are one family: Bonferroni over them
            assert m == sum(1 for x in result.differences if x.metric == "heldout/total") > 1
            assert (f"{d.strategy} ({setting}) minus vanilla, paired by seed over {len(d.seeds)} seeds: "
                    f"{d.mean:+.3g}, {(1 - 0.05 / m) * 100:.4g}% interval, Bonferroni over {m} comparisons "
                    f"[{d.interval[0]:+.3g}, {d.interval[1]:+.3g}]: **{d.verdict}**") in text
    assert text.count(" minus vanilla") == sum(1 for d in result.differences if d.metric == "heldout/total")


def test_suite_cpu_time_sums_the_passes_of_cpu_time_json(tmp_path):
    figures = figures_module()
    path = tmp_path / "cpu_time.json"
    path.write_text(json.dumps({"machine": "AMD EPYC", "passes": [
        {"pass": "training", "cpu_user_s": 1000.0, "cpu_sys_s": 50.0, "wall_s": 2400.0, "parallel": 6},
        {"pass": "evaluation", "cpu_user_s": 110.0, "cpu_sys_s": 10.0, "wall_s": 600.0, "parallel": 6}]}))
    text = figures.suite_cpu_time(path)
    assert "**19.5 CPU-minutes**" in text and "training 17.5 CPU-min (40 min wall, 6 runs at a time)" in text
    assert "evaluation 2.0 CPU-min (10 min wall" in text and "AMD EPYC" in text


def test_heads_mlp_summary_pairs_heads_mlp_with_vanilla_and_the_input_site_by_seed(tmp_path):
    """README's heads_mlp paragraph: the quality rows are the paired held-out differences of the committed site
    suites, as a share of the other side's mean with the t-interval of the suite's primary family (Bonferroni over
    its two comparisons against each baseline), recomputed by hand here; a suite not
    committed yet is named as such."""
    figures = figures_module()
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results-cpu").mkdir(parents=True)
    for name in ("train_buckets_t1.json", "routing_sites_dydit_S2.json"):
        (repo / "benchmarks/results-cpu" / name).write_text((REPO / "benchmarks/results-cpu" / name).read_text())
    loss = {"vanilla": [1.0, 1.1, 0.9, 1.05], "dtr-a4-b0.8-sinput": [0.98, 1.09, 0.87, 1.04],
            "dtr-a4-b0.8-sheads_mlp": [1.02, 1.13, 0.93, 1.06]}
    lines = [{"suite": "routing-sites-digits", "run_id": f"{name}__seed{seed}", "status": "done", "seed": seed,
              "axes": {"routing": name}, "final": {"heldout/total": v}, "curves": {"heldout/total": [[600, v]]},
              "heldout_fingerprint": "f" * 64, "primary": "heldout/total", "config_fingerprint": f"{name}{seed}",
              "machine": "cpu", "torch": "2", "date": "2026-12-07"}
             for name, values in loss.items() for seed, v in enumerate(values)]
    raw = repo / "benchmarks/results-cpu/routing_sites_digits/runs.jsonl"
    raw.parent.mkdir()
    raw.write_text("".join(json.dumps(x) + "\n" for x in lines))
    text = figures.heads_mlp_summary(repo)
    for other in ("vanilla", "dtr-a4-b0.8-sinput"):
        diffs = [a - b for a, b in zip(loss["dtr-a4-b0.8-sheads_mlp"], loss[other])]
        base = statistics.fmean(loss[other])
        # the report's primary family against this baseline has two comparisons: 97.5% each
        half = 4.176534846104503 * statistics.stdev(diffs) / 2  # t(1 - 0.025 / 2, 3) * sd / sqrt(4)
        mean = statistics.fmean(diffs)
        assert f"{mean / base:+.1%} [{(mean - half) / base:+.1%}, {(mean + half) / base:+.1%}] (97.5%)" in text
    assert "digits (`benchmarks/results-cpu/routing_sites_digits/runs.jsonl`, 4 seeds)" in text
    assert "Fashion-MNIST: not yet committed (`configs/suites/fashion_routing.yaml`)" in text
    assert "**Training** (`benchmarks/results-cpu/train_buckets_t1.json`" in text and "**Sampling**" in text
