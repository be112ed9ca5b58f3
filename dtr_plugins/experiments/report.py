"""A suite's report: ``results.csv`` (one row per run and eval step), ``report.md``, ``plots/*.png`` and
``report.html`` (the same report as one self-contained page to open in a browser, :mod:`.report_html`).

Everything is rebuilt from the run directories, so ``dtr report SUITE_DIR`` works at any time, also
while a suite is half done.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dtr_plugins.core.errors import UserError
from dtr_plugins.core.io import clean_stale_temps, write_text
from dtr_plugins.core.metrics import LOWER, compared
from dtr_plugins.core.numbers import fmt, fmt_mean_std
from dtr_plugins.experiments.compare import DEFAULT_PRIMARY, ComparisonResult, compare_runs
from dtr_plugins.experiments.compare_markdown import render_comparison_markdown
from dtr_plugins.experiments.compare_records import runs_from_suite
from dtr_plugins.experiments.cost_report import cost_table, plot_quality_vs_flops
from dtr_plugins.experiments.raw_results import RAW_FILE, export_raw_results
from dtr_plugins.experiments.report_html import write_html_report
from dtr_plugins.experiments.svg_charts import Chart, mean_curve
from dtr_plugins.runs.record import RunRecord, by_group
from dtr_plugins.runs.rundir import RunDir, SuiteIndex
from dtr_plugins.sharing.model_card import fid_caveat

TRAIN_LOSS = "train_loss"


def report_metrics() -> dict[str, tuple[str, bool]]:
    """Eval record key -> (column title, lower is better), from the metric registry (:mod:`dtr_plugins.core.metrics`):
    every compared value but the training loss, which has a table of its own."""
    return {k: (title, direction == LOWER) for k, (title, direction) in compared().items() if k != TRAIN_LOSS}


def collect(suite_dir: Path) -> tuple[dict[str, Any], list[RunRecord]]:
    """The suite's index (``suite.json``) and one :class:`RunRecord` per run it lists (a run with a damaged
    record file has status ``unreadable (<file>)``)."""
    return SuiteIndex(suite_dir).read(), runs_from_suite(suite_dir)


def _final_loss(run: RunRecord) -> float | None:
    return run.train[-1]["loss"] if run.train else None


def write_csv(results: list[RunRecord], path: Path) -> list[str]:
    metric_keys = [k for k in report_metrics() if any(k in e for r in results for e in r.evals)]
    header = ["run_id", "group", "routing", "seed", "status", "step", *metric_keys, TRAIN_LOSS]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for r in results:
        rows = r.evals or [{"step": r.train[-1]["step"] if r.train else ""}]
        for e in rows:
            loss = next((t["loss"] for t in r.train if t["step"] == e["step"]), None) if r.evals else _final_loss(r)
            writer.writerow([r.id, r.group, r.routing, r.seed, r.status, e["step"],
                             *[_num(e.get(k)) for k in metric_keys], _num(loss)])
    write_text(path, buf.getvalue())
    return metric_keys


def _num(v: Any) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s



def metric_table(key: str, results: list[RunRecord]) -> str:
    """Rows: groups; columns: eval steps (mean ± std over seeds); best per column in bold. Differences
    against the baseline are the paired comparison's job (:mod:`.compare`), not this table's."""
    title, lower = report_metrics().get(key, ("final training loss" if key == TRAIN_LOSS else key, True))
    groups = by_group(results)
    if key == TRAIN_LOSS:
        cells = {g: {"final": [v for v in (_final_loss(r) for r in rs) if v is not None]} for g, rs in groups.items()}
        steps: list[Any] = ["final"]
    else:
        steps = sorted({e["step"] for r in results for e in r.evals if key in e})
        cells = {g: {s: [e[key] for r in rs for e in r.evals if e["step"] == s and e.get(key) is not None]
                     for s in steps} for g, rs in groups.items()}
    if not steps:
        return ""
    stats = {g: {s: _mean_std(v) if v else None for s, v in row.items()} for g, row in cells.items()}
    best = {}
    for s in steps:
        means = [st[0] for g in stats if (st := stats[g][s]) is not None]
        if means:
            best[s] = min(means) if lower else max(means)
    arrow = "lower is better" if lower else "higher is better"
    head = ["run", "seeds"] + [f"step {s}" if s != "final" else "final" for s in steps]
    lines = [f"### {title} ({arrow})", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, row in stats.items():
        out = [f"`{g}`", str(max((len(v) for v in cells[g].values()), default=0))]  # runs with a value
        for s in steps:
            st = row[s]
            if st is None:
                out.append("—")
                continue
            text = fmt_mean_std(st[0], st[1], len(cells[g][s]))
            out.append(f"**{text}**" if math.isclose(st[0], best.get(s, math.nan)) else text)
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def parameter_table(results: list[RunRecord]) -> str:
    """Rows: groups; columns: total parameters and the parameters one forward pass uses (``meta.json``
    ``parameters``, :func:`dtr_plugins.core.param_count.parameter_counts`; time experts hold N copies and use one).
    "" when no run recorded them."""
    rows = []
    for group, runs in by_group(results).items():
        counts = next((r.meta["parameters"] for r in runs if isinstance(r.meta.get("parameters"), dict)), None)
        if counts is not None:
            rows.append(f"| `{group}` | {fmt(counts.get('total'))} | {fmt(counts.get('active'))} |")
    if not rows:
        return ""
    return "\n".join(["### Parameters", "", "| run | total | active per forward |", "|---|---|---|", *rows]) + "\n"


def _eval_settings(results: list[RunRecord]) -> str:
    """The sampling applied at each run's last eval, one entry per distinct setting (a suite that varies the
    process or sampler lists each, with how many runs used it); "" without evals."""
    counts: dict[str, int] = {}
    for r in results:
        if r.evals:
            e = r.evals[-1]
            text = (f"{e.get('num_samples', '?')} samples per eval, sampler {e.get('sampler')} {e.get('respacing')}, "
                    f"cfg scale {e.get('cfg_scale')}" + _solver_extras(e))
            counts[text] = counts.get(text, 0) + 1
    if len(counts) < 2:
        return "".join(f", {text}" for text in counts)
    return "; " + "; ".join(f"{text} ({n} run{'s' * (n > 1)})" for text, n in sorted(counts.items()))


def _solver_extras(e: Mapping[str, Any]) -> str:
    """The guidance interval, time shift and tolerances of an eval record, where they are set (else "")."""
    parts = []
    if e.get("guidance_interval") is not None:
        parts.append(f"guidance interval {e['guidance_interval']}")
    if e.get("time_shift") not in (None, 1.0):
        parts.append(f"time shift {e['time_shift']}")
    if e.get("atol") is not None:
        parts.append(f"atol {e['atol']} rtol {e.get('rtol')}")
    return "".join(f", {p}" for p in parts)


def build_report(suite_dir: str | Path) -> Path:
    suite_dir = Path(suite_dir)
    index, results = collect(suite_dir)
    metric_keys = write_csv(results, suite_dir / "results.csv")
    export_raw_results(suite_dir)
    comparison = compare_runs(results, primary=str(index.get("primary") or DEFAULT_PRIMARY))
    plots = _plots(suite_dir, results, metric_keys) + _comparison_plots(suite_dir, results, comparison)
    drawn = plot_quality_vs_flops(results, comparison.primary, suite_dir / "plots" / "quality_vs_flops.png")
    plots += [drawn] if drawn is not None else []
    done = [r for r in results if r.status == "done"]
    first = next((r for r in results if r.meta), None)
    evals = [e for r in results for e in r.evals]
    extractor = sorted({str(e.get("feature_extractor")) for e in evals if e.get("feature_extractor")})
    stale = [r for r in done if not r.current]
    lines = [f"# Suite `{index.get('name', suite_dir.name)}`", "",
             f"{len(done) - len(stale)} of {len(results)} runs finished with the suite's current config"
             + (f"; {len(stale)} more finished with an older config of this suite (stale: "
                f"{', '.join(f'`{r.id}`' for r in stale)}; their numbers are not of the current config, rerun them "
                f"with `dtr suite {index.get('file', 'SUITE.yaml')} --rerun-changed`)" if stale else "")
             + f". Rebuild with `dtr report {suite_dir}`.", ""]
    if first:
        m = first.meta
        lines += ["Produced by: device " + str(m.get("device", "?")) + f", precision {m.get('precision', '?')}, "
                  f"world size {m.get('world_size', '?')}, torch {m.get('torch', '?')}, dtr-plugins "
                  f"{m.get('dtr_plugins', '?')} (commit {str(m.get('git_commit') or '?')[:10]}).",
                  "Metrics: extractor " + (", ".join(extractor) or "none") + _eval_settings(results) + ".", ""]
    caveat = next((fid_caveat(e) for e in reversed(evals) if fid_caveat(e)), None)
    if caveat:
        lines += [f"**Warning:** FID is rank-deficient in {sum(bool(e.get('fid_rank_deficient')) for e in evals)} "
                  f"of {len(evals)} evaluations: {caveat}.", ""]
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        status = RunDir(suite_dir / r.id).read_status()
        lines.append(f"- run `{r.id}` failed: {status.get('error', '?')}")
    for r in results:
        if r.status.startswith("unreadable"):
            lines.append(f"- run `{r.id}`: {r.status}; its numbers are left out")
    if failed or any(r.status.startswith("unreadable") for r in results):
        lines.append("")
    lines += [render_comparison_markdown(comparison)]
    costs = cost_table(results, comparison)
    lines += [costs] if costs else []
    lines += ["## Results per run group", "", "Mean ± std over seeds (no test: see the paired comparisons above); "
              "best value per column in **bold**.", ""]
    for key in [*metric_keys, TRAIN_LOSS]:
        table = metric_table(key, results)
        if table:
            lines += [table]
    params = "" if costs else parameter_table(results)  # the cost table has both counts already
    if params:
        lines += [params]
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    lines += ["", f"Raw numbers: [results.csv](results.csv); per run (config fingerprint, seed, every metric and "
              f"held-out band, machine, torch, date): [{RAW_FILE}]({RAW_FILE}). Commit that file as "
              f"`benchmarks/results-<machine>/{index['name']}/runs.jsonl` and run `make figures` to put these tables "
              f"in the docs.", ""]
    markdown = "\n".join(lines)
    write_html_report(suite_dir, markdown, _charts(results, metric_keys))
    return write_text(suite_dir / "report.md", markdown)


def _charts(results: list[RunRecord], metric_keys: list[str]) -> dict[str, list[Chart]]:
    """The curves of the report's line plots as :class:`Chart` s for ``report.html`` (values on hover): per
    plot stem, one chart per panel, one series per group (mean over its seeds at the steps all logged)."""
    from dtr_plugins.experiments.compare_plots import group_curves

    groups = by_group(results)
    out: dict[str, list[Chart]] = {}
    out["metrics_vs_steps"] = [
        Chart(report_metrics()[k][0], {g: mean_curve([[(e["step"], e[k]) for e in r.evals if e.get(k) is not None]
                                                      for r in rs]) for g, rs in groups.items()},
              y_label=report_metrics()[k][0]) for k in metric_keys]
    out["train_loss"] = [Chart("training loss", {g: mean_curve([[(t["step"], t["loss"]) for t in r.train]
                                                                 for r in rs]) for g, rs in groups.items()},
                               y_label="training loss", log_y=True)]
    heldout = group_curves(results)
    bands = sorted({m for cs in heldout.values() for c in cs for m in c if m.startswith("heldout/band")},
                   key=lambda m: int(m[len("heldout/band"):]))
    out["heldout_loss_bands"] = [
        Chart("held-out loss, total" if m == "heldout/total" else f"held-out loss, band {m[len('heldout/band'):]}",
              {g: mean_curve([c.get(m, ()) for c in cs]) for g, cs in heldout.items()}, y_label="held-out loss")
        for m in ["heldout/total", *bands]]
    return out


def _plots(suite_dir: Path, results: list[RunRecord], metric_keys: list[str]) -> list[Path]:
    from dtr_plugins.experiments import plots

    out_dir = suite_dir / "plots"
    clean_stale_temps(out_dir)  # left by a report that was killed mid-write
    made = []
    groups = by_group(results)
    if metric_keys:
        series = {k: {g: [[(e["step"], e[k]) for e in r.evals if e.get(k) is not None] for r in rs]
                      for g, rs in groups.items()} for k in metric_keys}
        made.append(plots.plot_metrics_vs_steps(series, {k: report_metrics()[k][0] for k in metric_keys},
                                                out_dir / "metrics_vs_steps.png"))
    curves = {g: [[(t["step"], t["loss"]) for t in r.train] for r in rs] for g, rs in groups.items()}
    if any(c for cs in curves.values() for c in cs):
        made.append(plots.plot_metrics_vs_steps({"loss": curves}, {"loss": "training loss"},
                                                out_dir / "train_loss.png", log_y=True))
    buckets = {g: [r.train[-1]["loss_bucket"] for r in rs if r.train and r.train[-1].get("loss_bucket")]
               for g, rs in groups.items()}
    if any(buckets.values()):
        made.append(plots.plot_loss_per_bucket(buckets, out_dir / "loss_per_timestep_bucket.png"))
    samples = _sample_rows(suite_dir, groups)
    if samples is not None:
        made.append(plots.plot_sample_rows(samples[0], out_dir / "samples.png", class_names=samples[1]))
    masks = mask_plots(groups, out_dir)
    made.extend(masks)
    return made


def _sample_rows(suite_dir: Path, groups: dict[str, list[RunRecord]]):
    """Per group, the first sample of each class from its first run with final samples (``samples.npz``), and
    the class names (:meth:`RunDir.class_names`); None when no run has samples."""
    import numpy as np

    from dtr_plugins.experiments.plots import pick_per_class

    rows, names = {}, None
    for g, rs in groups.items():
        run = next((RunDir(suite_dir / r.id) for r in rs if (suite_dir / r.id / "samples" / "samples.npz").exists()),
                   None)
        if run is None:
            continue
        with np.load(run.samples / "samples.npz") as data:
            images, labels = data["arr_0"], data["labels"] if "labels" in data.files else None
        run_names = run.class_names()
        names = names or run_names
        rows[f"{g} ({run.path.name})"] = pick_per_class(images, labels if run_names else None,
                                                        len(run_names) if run_names else None)
    return (rows, names) if rows else None


def _comparison_plots(suite_dir: Path, results: list[RunRecord], comparison: ComparisonResult) -> list[Path]:
    """``heldout_loss_bands.png`` (held-out loss per noise band vs step, one line per group, band over
    seeds) and ``paired_differences.png`` (forest plot), each only when there is something to draw."""
    from dtr_plugins.experiments.compare_plots import group_curves, plot_forest, plot_heldout_bands

    made = []
    groups = group_curves(results)
    if any(m.startswith("heldout/") for cs in groups.values() for c in cs for m in c):
        made.append(plot_heldout_bands(groups, suite_dir / "plots" / "heldout_loss_bands.png"))
    if any(d.mean is not None for d in comparison.differences):
        made.append(plot_forest(comparison, suite_dir / "plots" / "paired_differences.png"))
    return made


def mask_plots(groups: dict[str, list[RunRecord]], out_dir: Path) -> list[Path]:
    """One heatmap per distinct routing, from the strategy of the run's config and the routed layer
    widths its training recorded in meta.json (no model is built; vanilla has nothing to show). A learned
    strategy's gates live in its weights: they are drawn from the run's last checkpoint (gates_*.png)."""
    from dtr_plugins.compose import build_routing_plan, build_strategy_from
    from dtr_plugins.core.config import config_from_dict
    from dtr_plugins.core.contracts import LearnedRoutingStrategy
    from dtr_plugins.experiments.plots import plot_routing_plan

    made, seen = [], set()
    for g, rs in groups.items():
        run = next((r for r in rs if r.meta.get("routed_channels")), None)
        if run is None or run.routing == "vanilla":
            continue
        routing = json.dumps(run.config.get("routing"), sort_keys=True)
        if routing in seen:
            continue
        seen.add(routing)
        try:
            cfg = config_from_dict(dict(run.config), source=g)
            if isinstance(build_strategy_from(cfg), LearnedRoutingStrategy):  # gates live in the weights
                made.extend(_gate_plot(out_dir.parent / run.id, out_dir, run.routing, len(seen), g))
                continue
            plan = build_routing_plan(cfg, run.meta["routed_channels"])
        except UserError:
            continue
        made.append(plot_routing_plan(plan, out_dir / f"masks_{run.routing}_{len(seen)}.png",
                                      title=f"{g}: {plan.strategy_repr}"))
    return made


def _gate_plot(run_dir: Path, out_dir: Path, routing: str, index: int, label: str) -> list[Path]:
    """The learned gates of one run, from its last checkpoint (:mod:`.gate_plots`); none without one."""
    from dtr_plugins.experiments.gate_plots import plot_run_gates

    drawn = plot_run_gates(run_dir, out_dir / f"gates_{routing}_{index}.png", label)
    return [drawn] if drawn is not None else []
