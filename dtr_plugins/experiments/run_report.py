"""The report of one run: ``<run>/report.md`` and ``<run>/plots/*.png``, rebuilt from the run directory.

``dtr report RUN_DIR`` writes it (``dtr report SUITE_DIR`` writes a suite's, :mod:`.report`). It reads only
what training wrote (``config.yaml``, ``meta.json``, ``metrics.jsonl``, ``classes.json``,
``samples/samples.npz``), so it works while the run trains and after it stopped:

- ``plots/train_loss.png``: training loss over steps (log scale);
- ``plots/heldout_loss_per_band.png``: held-out loss against the noise band, one line per held-out evaluation
  (the latest five; :mod:`dtr_plugins.evaluation.heldout` records);
- ``plots/metrics_vs_steps.png``: the evaluation metrics (FID, precision, ...) evaluated at two steps or more, over
  steps (a metric evaluated once is in the tables only: no panel with one dot);
- ``plots/masks_<routing>_1.png`` (or ``gates_...``): the run's routing masks, as in a suite's report;
- the final samples: ``samples/grid.png`` as sampling wrote it, linked once (``plots/samples.png`` only for a run
  whose samples have no grid).

Not drawn for one run: the suite's paired comparisons (forest plot) and per-group sample rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dtr_plugins.core.errors import UserError
from dtr_plugins.core.images import readable_grid
from dtr_plugins.core.io import atomic_write, write_text
from dtr_plugins.core.numbers import fmt
from dtr_plugins.experiments.compare import is_band, metric_info
from dtr_plugins.experiments.compare_records import curves_from_records, run_record
from dtr_plugins.runs.listing import find_runs, is_run_dir, summarize_run
from dtr_plugins.runs.rundir import RunDir
from dtr_plugins.sharing.model_card import fid_caveat

__all__ = ["build_run_report"]


def _eval_keys(curves: dict[str, list[tuple[int, float]]]) -> list[str]:
    return [k for k in curves if not k.startswith("heldout/")]


def _plots(run: RunDir, name: str, records: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]],
           out_dir: Path) -> list[Path]:
    from dtr_plugins.experiments import plots

    made = []
    loss = [(r["step"], float(r["loss"])) for r in records
            if isinstance(r.get("loss"), (int, float)) and isinstance(r.get("step"), int)]
    if loss:
        made.append(plots.plot_metrics_vs_steps({"loss": {name: [loss]}}, {"loss": "training loss"},
                                                out_dir / "train_loss.png", log_y=True))
    bands = heldout_by_step(curves)
    if bands:
        held = run.read_meta().get("heldout")
        target = held.get("target") if isinstance(held, dict) else None
        made.append(plots.plot_heldout_per_band(bands, out_dir / "heldout_loss_per_band.png", target=target))
    keys = [k for k in _eval_keys(curves) if len(curves[k]) > 1]  # evaluated once: the tables say it
    if keys:
        series = {k: {name: [curves[k]]} for k in keys}
        titles = {k: (metric_info(k) or (k, ""))[0] for k in keys}
        made.append(plots.plot_metrics_vs_steps(series, titles, out_dir / "metrics_vs_steps.png"))
    made.extend(_masks(run, name, out_dir))
    grid, npz = run.samples / "grid.png", run.samples / "samples.npz"
    if grid.exists():
        made.append(grid)  # drawn once, by sampling
    elif npz.exists():
        with np.load(npz) as data:
            images = data["arr_0"][:100]
            labels = data["labels"][:100] if "labels" in data.files else None
        if len(images):
            from PIL import Image

            picture = readable_grid(images, labels, run.class_names())
            made.append(atomic_write(out_dir / "samples.png",
                                     lambda tmp: Image.fromarray(picture).save(tmp, format="PNG")))
    return made


def heldout_by_step(curves: dict[str, list[tuple[int, float]]]) -> dict[int, list[float]]:
    """Held-out loss per band at each step every band was scored: ``{step: [band0, band1, ...]}``."""
    bands = sorted((int(k[len("heldout/band"):]), dict(v)) for k, v in curves.items() if is_band(k))
    if not bands:
        return {}
    steps = sorted(set.intersection(*(set(points) for _, points in bands)))
    return {s: [points[s] for _, points in bands] for s in steps}


def _masks(run: RunDir, name: str, out_dir: Path) -> list[Path]:
    """The run's routing masks (or learned gates), drawn as a suite's report draws them."""
    from dtr_plugins.experiments.report import mask_plots

    record = run_record(run, name)
    return mask_plots({name: [record]}, out_dir)


def _eval_table(records: list[dict[str, Any]]) -> list[str]:
    """Every evaluation record: one row per step, one column per metric (values by :func:`fmt`)."""
    evals = [(r["step"], r["eval"]) for r in records if isinstance(r.get("eval"), dict) and "step" in r]
    keys = list(dict.fromkeys(k for _, e in evals for k, v in e.items()
                              if metric_info(k) and isinstance(v, (int, float)) and not isinstance(v, bool)))
    if not keys:
        return []
    lines = ["## Evaluations", "", "| step | " + " | ".join((metric_info(k) or (k, ""))[0] for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for step, e in evals:
        lines.append(f"| {step} | " + " | ".join(fmt(e.get(k)) for k in keys) + " |")
    last = evals[-1][1]
    applied = ", ".join(f"{k} {last[k]}" for k in ("num_samples", "sampler", "respacing", "cfg_scale",
                                                    "guidance_interval", "time_shift", "atol", "rtol",
                                                    "feature_extractor", "weights")
                        if last.get(k) is not None and not (k == "time_shift" and last[k] == 1.0))
    flagged = [step for step, e in evals if fid_caveat(e)]
    warning = (f"**Warning:** the FID of step(s) {', '.join(map(str, flagged))} is rank-deficient: "
               f"{fid_caveat(dict(evals)[flagged[-1]])}." if flagged else "")
    return lines + ["", f"Last evaluation: {applied}." if applied else "", *([warning] if warning else []), ""]


def build_run_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.md`` and its pictures under ``<run_dir>/plots/``; returns the report's path.

    Raises :class:`UserError` when ``run_dir`` is not a run directory (see :func:`.runs.is_run_dir`).
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory or suite folder")
    if not is_run_dir(path):
        inside = find_runs(path)
        hint = (f"; it holds {len(inside)} run(s), e.g. {inside[0]} (`dtr runs {path}` lists them)" if inside
                else "")
        raise UserError(f"{path}: not a run directory (no config.yaml with meta.json, metrics.jsonl or "
                        f"checkpoints/) and not a suite folder (no suite.json){hint}")
    run = RunDir(path)
    summary = summarize_run(path)
    records = run.read_metrics()
    curves, _ = curves_from_records(records)
    name = run.read_config().get("name") or path.name
    made = _plots(run, str(name), records, curves, path / "plots")
    meta = run.read_meta()
    step = "—" if summary.step is None else f"{summary.step}" + (f" of {summary.steps}" if summary.steps else "")
    lines = [f"# Run `{name}`", "",
             f"Status **{summary.status}**, step {step}. Strategy {summary.strategy}; backbone {summary.backbone}.",
             f"Rebuild with `dtr report {path}`.", ""]
    if summary.missing:
        lines += [f"Still missing: {', '.join(summary.missing)} (`dtr train CONFIG --resume` completes it).", ""]
    if meta:
        lines += [f"Produced by: device {meta.get('device', '?')}, precision {meta.get('precision', '?')}, world size "
                  f"{meta.get('world_size', '?')}, torch {meta.get('torch', '?')}, dtr-plugins "
                  f"{meta.get('dtr_plugins', '?')} (commit {str(meta.get('git_commit') or '?')[:10]}).", ""]
    lines += ["## Latest values", "", "| metric | value | step |", "|---|---|---|",
              f"| training loss | {fmt(summary.loss)} | {summary.step if summary.loss is not None else '—'} |"]
    for key, value in summary.metrics.items():
        lines.append(f"| {(metric_info(key) or (key, ''))[0]} | {fmt(value)} | {summary.metrics_step.get(key, '—')} |")
    lines.append("")
    lines += _eval_table(records)
    if made:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(path).as_posix()})" for p in made] + [""]
    return write_text(path / "report.md", "\n".join(lines))
