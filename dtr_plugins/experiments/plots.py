"""Pictures: mask heatmaps, sample grids and metric curves (matplotlib, Agg backend, atomic writes)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from dtr_plugins.core.images import readable_grid
from dtr_plugins.core.io import save_figure
from dtr_plugins.core.routing import RoutingPlan


def _finish(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save with the bounding box fitted to everything drawn (no title, label or legend cut off); close."""
    out = save_figure(fig, path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out


def _wrap(title: str, width: int = 70) -> str:
    """Long titles on several lines (each line kept whole), so a title never runs past its figure."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def _layer_label(layers: Sequence[int]) -> str:
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ",".join(map(str, layers))


def plot_routing_plan(plan: RoutingPlan, path: str | Path, title: str = "", max_tables: int = 8) -> Path:
    """One heatmap per distinct mask table: timestep on the y axis (t=0 at the bottom), channel on x."""
    tables = plan.tables()
    if not tables:  # vanilla: draw the all-active table once so the picture still says something
        channels = plan.layer_channels[0] if plan.layer_channels else 1
        tables = [(torch.ones(plan.num_tasks, channels, dtype=torch.bool), list(range(len(plan.layer_channels))))]
    shown = tables[:max_tables]
    cols = min(len(shown), 4)
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    for ax, (table, layers) in zip(axes.flat, shown):
        img = table.to(torch.uint8).cpu().numpy()
        ax.imshow(img, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        ax.set_xlabel(f"channel (C = {table.shape[1]})")
        ax.set_ylabel(f"timestep t (T = {table.shape[0]})")
        share = img.mean()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{_layer_label(layers)}  ({share:.0%} active)", fontsize=9)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    more = f"  (+{len(tables) - len(shown)} more tables)" if len(tables) > len(shown) else ""
    fig.suptitle(_wrap((title or plan.strategy_repr) + more, 30 * cols) + "\nblack = channel active for that timestep",
                 fontsize=10)
    return _finish(fig, path)


def plot_metrics_vs_steps(series: dict[str, dict[str, list[list[tuple[int, float]]]]], titles: dict[str, str],
                          path: str | Path, log_y: bool = False) -> Path:
    """One panel per metric; one line per group (mean over seeds) with a band from the seeds' min to max."""
    keys = list(series)
    cols = min(len(keys), 3)
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys):
        drawn: set[int] = set()
        for group, runs in series[key].items():
            runs = [r for r in runs if r]
            if not runs:
                continue
            steps = sorted(set.intersection(*({s for s, _ in r} for r in runs)))
            if not steps:
                continue
            values = np.array([[dict(r)[s] for s in steps] for r in runs], dtype=float)
            mean = values.mean(0)
            drawn.update(steps)
            (line,) = ax.plot(steps, mean, marker="o" if len(steps) < 30 else None, ms=3, label=group)
            if len(runs) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        ax.set_title(_wrap(titles.get(key, key), 45))
        ax.set_xlabel("training step")
        if 0 < len(drawn) <= 8:  # few evaluations: ticks at the steps evaluated
            ax.set_xticks(sorted(drawn))
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:  # below the panels, as many rows as the names need
        fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(len(labels), cols * 2, 4)),
                   fontsize=8, frameon=False)
    return _finish(fig, path)


def plot_loss_per_bucket(buckets: dict[str, list[list[float | None]]], path: str | Path) -> Path:
    """Final training loss per timestep bucket (t = 0 .. T-1 in ten bins), one line per group."""
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for group, runs in buckets.items():
        if not runs:
            continue
        arr = np.array([[np.nan if v is None else v for v in r] for r in runs], dtype=float)
        seen = np.isfinite(arr).sum(0)
        mean = np.where(seen > 0, np.nansum(arr, axis=0) / np.maximum(seen, 1), np.nan)  # empty bucket: a gap
        x = (np.arange(len(mean)) + 0.5) / len(mean)
        ax.plot(x, mean, marker="o", ms=3, label=group)
    ax.set_xlabel("timestep t / T (bucket centre)")
    ax.set_ylabel("training loss (last log window)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(buckets) <= 4:
        ax.legend(fontsize=8)
    else:  # many groups: beside the axes, not over the lines
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.set_title("loss per timestep bucket")
    return _finish(fig, path)


def pick_per_class(images: np.ndarray, labels: np.ndarray | None, num_classes: int | None,
                   count: int = 10) -> tuple[np.ndarray, np.ndarray | None]:
    """The first image of each class (up to 16 classes) for a conditional model, else the first ``count``."""
    if labels is None or not num_classes or num_classes <= 1:
        return images[:count], None if labels is None else labels[:count]
    first = [int(np.flatnonzero(labels == c)[0]) for c in range(min(num_classes, 16)) if (labels == c).any()]
    return images[first], labels[first]


def plot_sample_rows(rows: dict[str, tuple[np.ndarray, np.ndarray | None]], path: str | Path,
                     class_names: Sequence[str] | None = None) -> Path:
    """One labelled row of samples per group (a strategy): ``rows`` maps the group to uint8 NHWC images and
    their labels (:func:`pick_per_class`); cells enlarged and captioned by :func:`readable_grid`."""
    grids = {g: readable_grid(imgs, labels, class_names if labels is not None else None, nrow=len(imgs))
             for g, (imgs, labels) in rows.items() if len(imgs)}
    if not grids:
        raise ValueError("no samples to draw")
    width = max(g.shape[1] for g in grids.values())
    heights = [g.shape[0] for g in grids.values()]
    dpi = 100
    fig, axes = plt.subplots(len(grids), 1, figsize=(max(width / dpi, 4), sum(heights) / dpi + 0.35 * len(grids)),
                             squeeze=False, gridspec_kw={"height_ratios": heights}, layout="constrained")
    for ax, (group, grid) in zip(axes[:, 0], grids.items()):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(group, fontsize=10, loc="left")
        ax.axis("off")
    return _finish(fig, path, dpi=dpi)
