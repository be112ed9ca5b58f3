"""Pictures of paired comparisons: held-out loss per noise band over training, and a forest plot of the
paired differences with their intervals (matplotlib, Agg backend, atomic writes, nothing cut off)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dtr_plugins.core.io import save_figure
from dtr_plugins.experiments.compare import (
    BETTER,
    LOWER,
    NOT_RESOLVABLE,
    NOT_RESOLVED,
    WORSE,
    ComparisonResult,
    RunRecord,
    is_band,
    metric_info,
)

Curves = Mapping[str, Sequence[tuple[int, float]]]
VERDICT_COLOURS = {BETTER: "#1a9641", WORSE: "#d7191c", NOT_RESOLVED: "#7f7f7f", NOT_RESOLVABLE: "#7f7f7f"}


def group_curves(runs: Sequence[RunRecord], *, statuses: Sequence[str] = ("done",)) -> dict[str, list[Curves]]:
    """Runs grouped by their axis values (seed left out): ``{"dtr-a4-b0.8, min_snr": [curves of each seed]}``."""
    out: dict[str, list[Curves]] = {}
    for run in runs:
        if run.status in statuses:
            out.setdefault(", ".join(str(v) for v in run.axes.values()) or run.id, []).append(run.curves)
    return out


def _mean_and_range(seed_curves: Sequence[Sequence[tuple[int, float]]]):
    """Steps logged by every seed, and the mean, min and max over seeds there (None when no common step)."""
    curves = [dict(c) for c in seed_curves if c]
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        return None
    values = np.array([[c[s] for s in steps] for c in curves], dtype=float)
    return np.array(steps), values.mean(0), values.min(0), values.max(0)


def plot_heldout_bands(groups: Mapping[str, Sequence[Curves]], path: str | Path, *, log_y: bool = False) -> Path:
    """Held-out loss vs training step: one panel for the total and one per noise band (small multiples),
    one line per group (mean over its seeds) with a shaded band from the seeds' minimum to maximum.

    ``groups``: label -> one ``{metric: [(step, value)]}`` per seed, metrics ``heldout/total`` and
    ``heldout/band<k>`` (see :func:`group_curves`). Raises ``ValueError`` when no group has any.
    """
    bands = sorted({int(m[len("heldout/band"):]) for cs in groups.values() for c in cs for m in c if is_band(m)})
    metrics = ["heldout/total"] + [f"heldout/band{b}" for b in bands]
    if not any(c.get(m) for cs in groups.values() for c in cs for m in metrics):
        raise ValueError("no held-out loss curves to plot")
    cols = 4
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes.flat, metrics):
        for i, (label, seed_curves) in enumerate(groups.items()):
            stats = _mean_and_range([c.get(metric, ()) for c in seed_curves])
            if stats is None:
                continue
            steps, mean, low, high = stats
            colour = colours[i % len(colours)]
            (line,) = ax.plot(steps, mean, color=colour, marker="o" if len(steps) < 30 else None, ms=2.5, lw=1.2)
            if len(seed_curves) > 1:
                ax.fill_between(steps, low, high, color=colour, alpha=0.18, lw=0)
            handles.setdefault(f"{label} ({len(seed_curves)} seed{'s' * (len(seed_curves) > 1)})", line)
        if metric == "heldout/total":
            title = "total (all bands)"
        else:
            k, n = int(metric[len("heldout/band"):]), max(bands) + 1
            title = f"band {k}: t/T in [{k / n:.2g}, {(k + 1) / n:.2g})"
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    spare = list(axes.flat)[len(metrics):]
    for ax in spare:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=8)
    fig.suptitle("held-out epsilon MSE (EMA weights, fixed inputs): mean over seeds, shaded min–max", fontsize=10)
    if spare and len(handles) <= 8:  # the legend fills the empty panel
        spare[-1].legend(list(handles.values()), list(handles), loc="center", fontsize=7, frameon=False)
        fig.tight_layout()
    else:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 3), fontsize=8,
                   frameon=False)
        fig.tight_layout(rect=(0, min(0.03 * ((len(handles) + 2) // 3) + 0.02, 0.4), 1, 1))
    out = save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_forest(result: ComparisonResult, path: str | Path, *, include_bands: bool = False) -> Path:
    """Paired differences with their intervals: one panel per metric, one row per strategy and setting; the
    point is the mean difference over seeds, the bar its interval (none with one seed: hollow point), the
    colour the verdict. Raises ``ValueError`` when there is no difference to draw."""
    rows = [d for d in result.differences if d.mean is not None and (include_bands or not is_band(d.metric))]
    if not rows:
        raise ValueError("no paired differences to plot")
    metrics = list(dict.fromkeys(d.metric for d in rows))
    heights = [sum(d.metric == m for d in rows) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7.5, 1.0 + 0.42 * sum(heights) + 0.7 * len(metrics)),
                             gridspec_kw={"height_ratios": [h + 1.2 for h in heights]}, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        mine = [d for d in rows if d.metric == metric]
        title, direction = metric_info(metric) or (metric, LOWER)
        for y, d in enumerate(reversed(mine)):
            colour = VERDICT_COLOURS.get(d.verdict, VERDICT_COLOURS[NOT_RESOLVED])
            if d.interval is not None and d.mean is not None and d.interval[1] > d.interval[0]:
                ax.errorbar(d.mean, y, xerr=[[d.mean - d.interval[0]], [d.interval[1] - d.mean]], fmt="o",
                            color=colour, capsize=3, ms=5, mfc="white" if d.verdict == NOT_RESOLVABLE else colour)
            else:  # no interval, or a zero-width one: a hollow point, never a verdict colour
                ax.plot(d.mean, y, "o", mfc="white", mec=colour, ms=6)
            test = f", {d.correction} x{d.family_size}" if d.family_size > 1 else ""
            note = (f"{d.verdict} ({d.reason}), n={len(d.seeds)}" if d.verdict == NOT_RESOLVABLE
                    else f"{d.verdict}, n={len(d.seeds)}{test}")
            ax.annotate(note, (1.0, y), xycoords=("axes fraction", "data"),
                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=7, color=colour)
        labels = [d.strategy + (" | " + ", ".join(f"{k}={v}" for k, v in d.setting) if d.setting else "")
                  for d in reversed(mine)]
        ax.set_yticks(range(len(mine)), labels, fontsize=8)
        ax.set_ylim(-0.7, len(mine) - 0.3)
        ax.axvline(0.0, color="black", lw=0.8, ls="--")
        better = "← better" if direction == LOWER else "better →"
        ax.set_xlabel(f"Δ {title} (strategy − {result.baseline}; {better})", fontsize=8)
        levels = sorted({f"{d.interval_level:.4g}" for d in mine})
        ax.set_title(f"{title}: paired difference, {result.method}-interval over seeds at level {', '.join(levels)}"
                     + (" (primary)" if metric == result.primary else " (Bonferroni-adjusted)"
                        if any(d.family_size > 1 for d in mine) else ""), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
