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

from dtr_plugins.core.images import mask_rgb, readable_grid
from dtr_plugins.core.io import save_figure
from dtr_plugins.core.routing import RoutingPlan


def _finish(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save with the bounding box fitted to everything drawn (no title, label or legend cut off); close."""
    out = save_figure(fig, path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out


def _phrases(text: str) -> list[str]:
    """``text`` cut after ``", "``, ``"; "`` and ``": "`` and before ``" ("``, outside parentheses only: the
    pieces a title may break between (``switch(E=4, k=2)`` stays one piece)."""
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([") - (ch in ")]")
        if depth == 0 and ch == " " and i > start and (text[i - 1] in ",;:" or text[i + 1: i + 2] == "("):
            pieces.append(text[start:i])
            start = i + 1
    return pieces + [text[start:]] if text[start:] else pieces


def wrap_title(title: str, width: int = 70) -> str:
    """Long titles on several lines, broken only between phrases (:func:`_phrases`), never inside one: a
    phrase longer than ``width`` gets a line of its own. Existing line breaks are kept."""
    out = []
    for given in title.split("\n"):
        line = ""
        for piece in _phrases(given):
            if line and len(line) + 1 + len(piece) > width:
                out.append(line)
                line = piece
            else:
                line = f"{line} {piece}" if line else piece
        out.append(line)
    return "\n".join(out)


def _layer_label(layers: Sequence[int]) -> str:
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ",".join(map(str, layers))


#: what one column of a mask table is at each routing site (docs/architecture.md; DiT's ``heads_mlp`` routes
#: the heads, then the MLP hidden units of each block: even routed layers are heads, odd ones MLP units)
SITE_UNITS = {"input": "channel", "heads": "attention head", "mlp": "MLP unit"}
SITE_NAMES = {"input": "block inputs", "heads": "attention heads", "mlp": "MLP hidden units",
              "heads_mlp": "attention heads and MLP hidden units"}


def unit_name(site: str, layers: Sequence[int]) -> str:
    """The unit a table's columns are at ``site`` for the routed ``layers`` it serves (``channel``,
    ``attention head``, ``MLP unit``; ``unit`` for a site this module does not know)."""
    if site == "heads_mlp":
        kinds = {SITE_UNITS["heads"] if layer % 2 == 0 else SITE_UNITS["mlp"] for layer in layers}
        return " / ".join(sorted(kinds))
    return SITE_UNITS.get(site, "unit")


def routing_plan_figure(plan: RoutingPlan, title: str = "", max_tables: int = 8):
    """The figure of :func:`plot_routing_plan` (not saved): one panel per distinct mask table, in the mask colours
    of :func:`dtr_plugins.core.images.mask_rgb` (the trackers' image uses the same)."""
    tables = plan.tables()
    if not tables:  # vanilla: draw the all-active table once so the picture still says something
        channels = plan.layer_channels[0] if plan.layer_channels else 1
        tables = [(torch.ones(plan.num_tasks, channels, dtype=torch.bool), list(range(len(plan.layer_channels))))]
    shown = tables[:max_tables]
    cols = min(len(shown), 4)
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    units = set()
    for ax, (table, layers) in zip(axes.flat, shown):
        unit = unit_name(plan.site, layers)
        units.add(unit)
        ax.imshow(mask_rgb(table), aspect="auto", origin="lower", interpolation="nearest")
        ax.set_xlabel(f"{unit} (count {table.shape[1]})")
        ax.set_ylabel(f"timestep t (T = {table.shape[0]})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{_layer_label(layers)}  ({table.float().mean().item():.0%} active)", fontsize=9)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    more = f"  (+{len(tables) - len(shown)} more tables)" if len(tables) > len(shown) else ""
    site = f"routing site {plan.site} ({SITE_NAMES.get(plan.site, plan.site)})"
    legend = f"blue = {' / '.join(sorted(units))} active at that timestep, grey = masked"
    fig.suptitle(wrap_title(f"{title or plan.strategy_repr}{more}; {site}", 30 * cols) + "\n" + legend,
                 fontsize=10)
    return fig


def plot_routing_plan(plan: RoutingPlan, path: str | Path, title: str = "", max_tables: int = 8) -> Path:
    """One heatmap per distinct mask table: timestep on the y axis (t=0 at the bottom), the site's unit on x
    (channel, attention head or MLP unit), active units in :data:`~dtr_plugins.core.images.MASK_ACTIVE`."""
    return _finish(routing_plan_figure(plan, title, max_tables), path)


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
        ax.set_title(wrap_title(titles.get(key, key), 45))
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


def heldout_band_figure(by_step: dict[int, list[float]], target: str | None = None, latest: int = 5):
    """The figure of :func:`plot_heldout_per_band` (not saved)."""
    steps = sorted(by_step)[-latest:]
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    colours = plt.get_cmap("viridis")(np.linspace(0.15, 0.85, len(steps)))
    for colour, step in zip(colours, steps):
        values = by_step[step]
        ax.plot(range(len(values)), values, marker="o", ms=3, color=colour, label=f"step {step}")
    count = max(len(v) for v in by_step.values())
    ax.set_xticks(range(count))
    ax.set_xlabel(f"noise band (0 = least noise, {count} bands of equal width)")
    measured = f"{target} MSE" if target else "held-out loss"
    ax.set_ylabel(f"held-out {measured}" if target else measured)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="held-out evaluation", title_fontsize=8)
    ax.set_title(wrap_title(f"held-out loss per noise band, EMA weights, fixed inputs; the latest {len(steps)} "
                            f"evaluation{'s' * (len(steps) > 1)}", 60), fontsize=10)
    return fig


def plot_heldout_per_band(by_step: dict[int, list[float]], path: str | Path, target: str | None = None) -> Path:
    """One run's held-out loss against the noise band: ``by_step`` maps a step to its loss per band
    (``[band0, band1, ...]``), one line per step (the latest five). ``target``: what the loss measures
    (``epsilon`` / ``velocity``, from the run's ``meta.json``), named on the y axis."""
    return _finish(heldout_band_figure(by_step, target), path)


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


def plot_quality_vs_flops(points: dict[str, list[tuple[float, float]]], metric_label: str, path: str | Path) -> Path:
    """A scatter plot: per group, its runs' ``(sampling GFLOPs per image, metric value)`` points (one marker
    per group); ``metric_label`` names the y axis."""
    fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
    for marker, (group, pts) in zip(("o", "s", "^", "D", "v", "P", "X", "*") * 8, points.items()):
        ax.scatter([x for x, _ in pts], [y for _, y in pts], marker=marker, label=group, alpha=0.8)
    ax.set_xlabel("sampling GFLOPs per image (counted)")
    ax.set_ylabel(metric_label)
    ax.set_title(wrap_title(f"{metric_label} against sampling compute, one point per run", 60))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path)
