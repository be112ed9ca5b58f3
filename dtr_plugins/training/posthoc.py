"""EMA snapshots and ``dtr ema RUN --sigma-rel S``, post-hoc EMA reconstruction from them (EDM2).

A run trained with ``ema: {name: power, sigma_rels: [...], snapshot_every: N}`` leaves
``<run>/ema/snapshot-<step>-<profile>.pt`` files (:func:`write_snapshots`, called by the trainer), each the
weights of one power-function average at one step with its ``sigma_rel``. The average of another width
``S`` at step ``T`` (default: the last snapshot's step) is the combination of the snapshots up to ``T`` whose
coefficients :func:`~dtr_plugins.core.phema.posthoc_coefficients` solves (least squares over the snapshots'
profiles, Karras et al. 2024, algorithm 3). Floating parameters are combined in float64 and stored in the
snapshots' dtype; buffers (and integer tensors) are those of the step-``T`` snapshot, as the EMA copies buffers.

The result is written as a checkpoint, ``<run>/ema/posthoc-<T>-sigma<S>.pt`` by default (``ema`` weights,
``config``, ``routing``, ``ema_profile``: width, step, snapshots and coefficients): ``dtr sample`` takes that file
as its source. Snapshots of profiles that are not power functions (``constant``, ``warmup``) are ignored.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dtr_plugins.core.errors import UserError
from dtr_plugins.runs.rundir import RunDir

if TYPE_CHECKING:
    from dtr_plugins.core.config import ExperimentConfig
    from dtr_plugins.core.contracts import EmaProfile
    from dtr_plugins.training.trainer import TrainState

__all__ = ["Snapshot", "power_snapshots", "reconstruct_ema", "write_snapshots"]


@dataclass(frozen=True)
class Snapshot:
    """One power-EMA snapshot file: its step, profile name, width and path."""

    step: int
    profile: str
    sigma_rel: float
    path: Path


def write_snapshots(run: RunDir, cfg: ExperimentConfig, state: TrainState, profiles: Sequence[EmaProfile]) -> None:
    """Write each profile's average of ``state`` (``state.averages()``, in the order of ``profiles``) to
    :meth:`RunDir.ema_snapshot_path` (atomic), in the checkpoint format: ``step``, ``ema``, ``config``,
    ``config_fingerprint``, ``routing`` and ``ema_profile`` (name, ``sigma_rel``, ``kind: snapshot``); ``dtr
    sample`` reads one as it reads a checkpoint."""
    from dtr_plugins.core.checkpoint import routing_record, save_checkpoint
    from dtr_plugins.core.fingerprint import weights_fingerprint

    config = cfg.to_dict()
    for profile, average in zip(profiles, state.averages(), strict=True):
        save_checkpoint(run.ema_snapshot_path(state.step, profile.name), step=state.step, ema=average.state_dict(),
                        config=config, config_fingerprint=weights_fingerprint(config),
                        routing=routing_record(state.model),
                        ema_profile={"name": profile.name, "sigma_rel": profile.sigma_rel, "kind": "snapshot"})


def power_snapshots(run: RunDir) -> list[Snapshot]:
    """The run's snapshots of power-function profiles (with a ``sigma_rel``), by step then profile.
    Raises :class:`UserError` when there are none."""
    from dtr_plugins.core.checkpoint import read_checkpoint

    found = []
    for step, profile, path in run.ema_snapshots():
        record = read_checkpoint(path).get("ema_profile") or {}
        if isinstance(record.get("sigma_rel"), float) and step > 0:
            found.append(Snapshot(step, profile, float(record["sigma_rel"]), path))
    if not found:
        raise UserError(f"{run.path}: no power-EMA snapshots in {run.ema_dir} (train with ema: {{name: power, "
                        f"sigma_rels: [0.05, 0.1], snapshot_every: N}} to keep them)")
    return found


def reconstruct_ema(source: str | Path, sigma_rels: Sequence[float], *, step: int | None = None,
                    out: str | Path | None = None) -> list[Path]:
    """Write one post-hoc EMA checkpoint per width of ``sigma_rels`` for the run directory ``source`` at
    ``step`` (default: the last snapshot's step); returns the files written (``out`` names the file when one
    width is asked for; default :meth:`RunDir.posthoc_path`).

    Raises :class:`UserError` (one line) for a source without snapshots, a ``step`` no snapshot was taken at,
    a width outside ``(0, 0.2886]``, or ``out`` with several widths."""
    from dtr_plugins.core.checkpoint import read_checkpoint, save_checkpoint
    from dtr_plugins.core.phema import posthoc_coefficients

    run = _run_of(source)
    if out is not None and len(sigma_rels) != 1:
        raise UserError(f"--out {out}: names one file; give one --sigma-rel with it (got {len(sigma_rels)})")
    for width in sigma_rels:
        if not 0 < width <= (1 / 12) ** 0.5:
            raise UserError(f"--sigma-rel: {width!r} is outside (0, 0.2886] (0.2886 = sqrt(1/12), the plain mean)")
    snapshots = power_snapshots(run)
    target = step if step is not None else max(s.step for s in snapshots)
    if not any(s.step == target for s in snapshots):
        steps = sorted({s.step for s in snapshots})
        raise UserError(f"--step {target}: no power-EMA snapshot at that step in {run.ema_dir} (steps: "
                        f"{', '.join(map(str, steps))})")
    used = [s for s in snapshots if s.step <= target]
    coefficients = posthoc_coefficients([s.step for s in used], [s.sigma_rel for s in used], target, list(sigma_rels))
    last = read_checkpoint(next(s for s in used if s.step == target).path)
    states = _combine(used, coefficients, last)
    written = []
    for j, width in enumerate(sigma_rels):
        path = Path(out) if out is not None else run.posthoc_path(target, width)
        record = {"name": f"posthoc-sigma{width:.3f}", "kind": "posthoc", "sigma_rel": float(width), "step": target,
                  "snapshots": [s.path.name for s in used], "coefficients": [float(c) for c in coefficients[:, j]]}
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(save_checkpoint(path, step=target, ema=states[j], config=last["config"],
                                       config_fingerprint=last.get("config_fingerprint"),
                                       routing=last.get("routing"), ema_profile=record))
    return written


def _run_of(source: str | Path) -> RunDir:
    path = Path(source)
    if not path.is_dir():
        raise UserError(f"{source}: not a run directory (dtr ema reads <run>/ema/snapshot-*.pt)")
    return RunDir(path)


def _combine(used: list[Snapshot], coefficients: np.ndarray, last: dict[str, Any]) -> list[dict[str, Any]]:
    """The combined state dicts (one per output column): floating parameters summed in float64 with the
    coefficients; buffers and non-floating tensors taken from ``last``, the snapshot at the wanted step."""
    from dtr_plugins.core.checkpoint import read_checkpoint

    outputs: list[dict[str, Any]] = [{} for _ in range(coefficients.shape[1])]
    buffers = _buffer_names(last)
    dtypes = {k: v.dtype for k, v in last["ema"].items()}
    for i, snap in enumerate(used):
        state = read_checkpoint(snap.path)["ema"]
        for name, tensor in state.items():
            if name in buffers or not tensor.is_floating_point():
                continue
            for j, out in enumerate(outputs):
                term = tensor.double() * float(coefficients[i, j])
                out[name] = term if name not in out else out[name] + term
    fixed = {k: v for k, v in last["ema"].items() if k in buffers or not v.is_floating_point()}
    return [{name: (out[name].to(dtypes[name]) if name in out else fixed[name]) for name in last["ema"]}
            for out in outputs]


def _buffer_names(ckpt: dict[str, Any]) -> set[str]:
    """The buffer names of the model a snapshot's config builds (on the meta device: no memory, no weights)."""
    from dtr_plugins.compose import compose
    from dtr_plugins.core.config import config_from_dict

    cfg = config_from_dict(ckpt["config"], source="snapshot config")
    model = compose(cfg, device="meta", data=False).model
    return {name for name, _ in model.named_buffers()}

