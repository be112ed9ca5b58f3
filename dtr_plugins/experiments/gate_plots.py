"""Pictures of learned routing: a strategy's gates per timestep and routed layer (matplotlib, Agg, atomic).

A learned strategy (``LearnedRoutingStrategy`` in :mod:`dtr_plugins.core.contracts`) reports its gates
through ``task_tables(num_tasks)``: one ``[T, K]`` table per routed layer (for ``switch``: the expert
selection probabilities, ``K = E``). The heatmap puts the layers side by side along x (``K`` columns
each, separated by white lines), the timestep on y (``t = 0`` at the bottom), as the static mask
heatmaps of :mod:`.plots` do.
"""
from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from dtr_plugins.core.contracts import GateSummary, LearnedRoutingStrategy
from dtr_plugins.core.io import save_figure
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.experiments.plots import unit_name, wrap_title


def gate_matrix(tables: Sequence[torch.Tensor]) -> tuple[np.ndarray, list[int]]:
    """Concatenate per-layer ``[T, K_l]`` tables along the unit axis -> ``([T, sum K_l] float64, offsets)``;
    ``offsets[l]`` is the first column of layer ``l`` (plus the total at the end)."""
    if not tables:
        raise ValueError("no gate tables to draw")
    rows = {int(t.shape[0]) for t in tables}
    if len(rows) != 1 or any(t.dim() != 2 for t in tables):
        raise ValueError(f"gate tables must be [T, K] with one T, got {[tuple(t.shape) for t in tables]}")
    arrays = [t.detach().double().cpu().numpy() for t in tables]
    offsets = [0]
    for a in arrays:
        offsets.append(offsets[-1] + a.shape[1])
    return np.concatenate(arrays, axis=1), offsets


def gate_figure(tables: Sequence[torch.Tensor], title: str = "", unit: str = "expert",
                value: str = "selection probability", site: str = ""):
    """The figure of :func:`plot_gate_tables` (not saved)."""
    matrix, offsets = gate_matrix(tables)
    layers = len(tables)
    lo, hi = float(matrix.min()), float(matrix.max())
    vmin, vmax = (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, hi)
    width = min(max(6.5, 0.12 * matrix.shape[1] + 2.0), 16.0)
    fig, ax = plt.subplots(figsize=(width, 4.6))
    im = ax.imshow(matrix, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                   vmin=vmin, vmax=vmax)
    for edge in offsets[1:-1]:
        ax.axvline(edge - 0.5, color="white", lw=0.8)
    centres = [(a + b - 1) / 2 for a, b in zip(offsets[:-1], offsets[1:])]
    step = max(1, layers // 16)
    ax.set_xticks(centres[::step], [str(i) for i in range(layers)][::step], fontsize=7)
    widths = sorted({b - a for a, b in zip(offsets[:-1], offsets[1:])})
    per = f"{widths[0]} {unit}s each" if len(widths) == 1 else f"{widths[0]}-{widths[-1]} {unit}s each"
    ax.set_xlabel(f"routed layer ({per})")
    ax.set_ylabel(f"timestep t (T = {matrix.shape[0]})")
    # each unit numbered within its layer on the top axis (every unit while they fit, else every few)
    top = ax.secondary_xaxis("top")
    every = max(1, -(-matrix.shape[1] // 48))
    columns = [c for a, b in zip(offsets[:-1], offsets[1:]) for c in range(a, b)]
    number = {c: c - a for a, b in zip(offsets[:-1], offsets[1:]) for c in range(a, b)}
    shown = [c for c in columns if number[c] % every == 0]
    top.set_xticks(shown, [str(number[c]) for c in shown], fontsize=6)
    top.set_xlabel(f"{unit} (numbered 0-{widths[-1] - 1} within each layer)", fontsize=7)
    fig.colorbar(im, ax=ax, label=value, fraction=0.04, pad=0.02)
    chars = int(width * 13)
    where = f" at routing site {site}" if site else ""
    head = wrap_title(title, chars) + "\n" if title else ""
    ax.set_title(head + wrap_title(f"learned gates{where}: {value} per timestep, layer and {unit}", chars),
                 fontsize=8)
    fig.tight_layout()
    return fig


def plot_gate_tables(tables: Sequence[torch.Tensor], path: str | Path, title: str = "",
                     unit: str = "expert", value: str = "selection probability", site: str = "") -> Path:
    """One heatmap of a learned strategy's gates: x = (routed layer, unit), y = timestep; returns ``path``.

    ``tables``: per routed layer (forward order) a ``[T, K]`` tensor, e.g. ``switch``'s expert
    probabilities. Values in ``[0, 1]`` use that fixed colour range; others the data's range. Layers are
    numbered on the bottom axis, the units of each layer (experts, channels) on the top axis; ``site`` (the
    routing site) is named in the title.
    """
    fig = gate_figure(tables, title, unit, value, site)
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out


def learned_gate_tables(plan: RoutingPlan) -> tuple[list[torch.Tensor], str, str] | None:
    """What to draw for a learned plan: the strategy's :class:`GateSummary`, else its ``task_tables`` (per unit
    gates, the unit named by the routing site: channel, attention head, MLP unit); None for a static plan or
    gates that depend on the input alone."""
    if plan.learned is None:
        return None
    strategy = plan.learned
    if isinstance(strategy, GateSummary):
        return strategy.gate_summary(plan.num_tasks)
    tables = typing.cast(LearnedRoutingStrategy, strategy).task_tables(plan.num_tasks)
    unit = unit_name(plan.site, range(len(plan.layer_channels)))
    return None if tables is None else (list(tables), unit, "gate")


def expert_owner_figure(owner: np.ndarray, num_experts: int, title: str = "", continuous: bool = False):
    """Which time expert runs each timestep: ``owner`` int ``[T]`` (expert of row ``t``) as a step line, the
    timestep on x and the expert index on y (the figure of :func:`plot_learned_gates` for time experts)."""
    steps = len(owner)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.step(np.arange(steps), owner, where="mid", color="tab:blue", lw=1.6)
    for change in np.flatnonzero(np.diff(owner)) + 1:
        ax.axvline(change - 0.5, color="0.7", lw=0.8, ls="--")
        ax.annotate(f"{change}", (change - 0.5, num_experts - 0.6), fontsize=7, ha="center", color="0.35")
    ax.set_yticks(range(num_experts))
    ax.set_ylim(-0.5, num_experts - 0.5)
    ax.set_xlim(-0.5, steps - 0.5)
    ax.set_xlabel(f"timestep t (T = {steps})" + (": noise level u = t / (T - 1)" if continuous else ""))
    ax.set_ylabel("expert")
    head = wrap_title(title, 84) + "\n" if title else ""
    ax.set_title(head + "time experts: the expert that denoises each timestep (boundaries dashed)", fontsize=8)
    fig.tight_layout()
    return fig


def plot_learned_gates(plan: RoutingPlan, path: str | Path, title: str = "") -> Path | None:
    """:func:`plot_gate_tables` of :func:`learned_gate_tables`; None when there is nothing to draw. Time experts
    (``TimeExpertRouting``) are drawn as the expert of every timestep (:func:`expert_owner_figure`)."""
    experts = plan.time_experts
    if experts is not None:
        owner = torch.arange(plan.num_tasks)
        tasks = owner.double() / max(plan.num_tasks - 1, 1) if plan.continuous is not None else owner
        chosen = experts.expert_of(tasks).cpu().numpy()
        count = len(experts.intervals())
        fig = expert_owner_figure(chosen, count, title or plan.strategy_repr, continuous=plan.continuous is not None)
        out = save_figure(fig, path, dpi=110)
        plt.close(fig)
        return out
    found = learned_gate_tables(plan)
    if found is None:
        return None
    tables, unit, value = found
    return plot_gate_tables(tables, path, title=title or plan.strategy_repr, unit=unit, value=value, site=plan.site)


def plot_run_gates(run_dir: str | Path, path: str | Path, label: str = "") -> Path | None:
    """The learned gates of a run's last checkpoint (EMA weights, on the CPU); None when the run has no
    checkpoint or its strategy reports nothing to draw."""
    from dtr_plugins.runs.rundir import RunDir
    from dtr_plugins.sampling.sample import load_run

    if RunDir(run_dir).latest_checkpoint() is None:
        return None
    cfg, model, _, ckpt_path = load_run(run_dir, use_ema=True, device="cpu")
    plan = model.plan
    if plan is None:
        return None
    title = f"{label or cfg.name}: {plan.strategy_repr} (EMA weights of {Path(ckpt_path).name})"
    return plot_learned_gates(plan, path, title=title)
