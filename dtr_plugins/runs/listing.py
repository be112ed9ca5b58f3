"""``dtr runs``: every run directory below a folder, with its status, progress and latest numbers.

A run directory is recognised by its files (:class:`~dtr_plugins.runs.rundir.RunDir`): ``config.yaml`` next
to ``meta.json``, ``metrics.jsonl`` or ``checkpoints/``, or a suite's ``status.json``. Its status is

- ``running``: a process holds its lock (``<run>/.lock``, taken by ``dtr train``);
- ``failed``: a suite recorded the run as failed (``status.json``) and nothing holds the lock;
- ``done``: :meth:`RunDir.missing_outputs` is empty (final checkpoint, and evaluation/samples when asked for);
- ``incomplete``: anything else (stopped, crashed, or not started yet; ``dtr train --resume`` continues it).

Nothing is written; the lock is only tested (a shared, non-blocking ``flock`` released at once).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dtr_plugins.core.errors import UserError
from dtr_plugins.core.metrics import compared
from dtr_plugins.core.numbers import MISSING, fmt
from dtr_plugins.core.text import printable
from dtr_plugins.experiments.compare import metric_info
from dtr_plugins.experiments.compare_records import run_record
from dtr_plugins.runs.record import RunRecord
from dtr_plugins.runs.rundir import RunDir

__all__ = ["RunSummary", "find_runs", "format_runs_table", "is_run_dir", "lock_held", "summarize_run"]

RUNNING, DONE, FAILED, INCOMPLETE = "running", "done", "failed", "incomplete"


@dataclass
class RunSummary:
    """What ``dtr runs`` shows of one run (``--json`` writes these fields): a view computed by
    :func:`summarize_run` from the run's :class:`~dtr_plugins.runs.record.RunRecord` (no reader of its own)."""

    run: str  # path relative to the folder listed
    status: str  # running | done | failed | incomplete
    step: int | None  # last step trained (training records or checkpoints)
    steps: int | None  # train.steps of the config
    loss: float | None  # last training loss logged
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each evaluation / held-out metric
    metrics_step: dict[str, int] = field(default_factory=dict)  # the step each of those values is from
    strategy: str = "?"
    backbone: str = "?"
    missing: list[str] = field(default_factory=list)  # outputs the run still lacks (RunDir.missing_outputs)
    note: str = ""  # why a status could not be decided fully (e.g. a config that no longer loads)
    process: str = "?"  # the diffusion process (config ``diffusion.name``; ``gaussian`` when unset)
    heldout_target: str | None = None  # what its held-out loss measures (meta.json): ``epsilon`` or ``velocity`` MSE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_run_dir(path: Path) -> bool:
    """``config.yaml`` next to ``meta.json``, ``metrics.jsonl`` or ``checkpoints/``; or a suite's ``status.json``
    (a suite run that failed before training wrote anything)."""
    rd = RunDir(path)
    trained = rd.config_path.is_file() and (rd.meta_path.is_file() or rd.metrics_path.is_file()
                                            or rd.checkpoints.is_dir())
    return trained or rd.status_path.is_file()


def find_runs(root: str | Path) -> list[Path]:
    """Run directories at or below ``root`` (sorted by path; sample and checkpoint folders are not entered)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (train a run first: dtr train CONFIG, or give the folder that "
                        "holds your runs)")
    found = []
    for folder, subdirs, _ in os.walk(root):
        path = Path(folder)
        if is_run_dir(path):
            found.append(path)
        subdirs[:] = sorted(d for d in subdirs if d not in ("checkpoints", "samples", "tensorboard", "wandb",
                                                            "mlruns", "plots", "report") and not d.startswith("."))
    return sorted(found)


def lock_held(run: RunDir) -> bool:
    """True when another process holds ``<run>/.lock`` (tested with a shared non-blocking ``flock``)."""
    import fcntl

    if not run.lock_path.is_file():
        return False
    try:
        fd = os.open(run.lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing releases a lock we took
    return False


def _routing_label(section: Any) -> str:
    if not isinstance(section, dict):
        return "?"
    params = ", ".join(f"{k}={v}" for k, v in section.items() if k != "name")
    return f"{section.get('name', '?')}" + (f" ({params})" if params else "")


def _backbone_label(section: Any) -> str:
    if not isinstance(section, dict):
        return "?"
    keys = [k for k in ("size", "depth", "hidden_size", "patch_size") if section.get(k) is not None]
    short = {"hidden_size": "hidden", "patch_size": "patch"}
    params = ", ".join(f"{short.get(k, k)} {section[k]}" for k in keys)
    return f"{section.get('name', '?')}" + (f" ({params})" if params else "")


def _process(config: Any) -> str:
    section = config.get("diffusion") if isinstance(config, dict) else None
    name = section.get("name") if isinstance(section, dict) else None
    return str(name) if name else "gaussian"  # the config's default process


def _heldout_target(meta: Any) -> str | None:
    held = meta.get("heldout") if isinstance(meta, dict) else None
    target = held.get("target") if isinstance(held, dict) else None
    return str(target) if target else None


def _status(run: RunDir, record: RunRecord) -> tuple[str, list[str], str]:
    """(status, missing outputs, note)."""
    from dtr_plugins.core.config import config_from_dict

    if lock_held(run):
        return RUNNING, [], ""
    if record.status == FAILED:
        return FAILED, [], record.error
    raw = dict(record.config)
    try:
        cfg = config_from_dict(raw, source=str(run.config_path))
    except UserError as exc:  # e.g. a plugin that is no longer installed: judge by the final checkpoint alone
        steps = (raw.get("train") or {}).get("steps")
        final = isinstance(steps, int) and run.checkpoint_path(steps).exists()
        return (DONE if final else INCOMPLETE), [], f"config does not load here: {exc}"
    missing = run.missing_outputs(cfg)
    return (INCOMPLETE if missing else DONE), missing, ""


def summarize_run(path: str | Path, root: str | Path | None = None) -> RunSummary:
    """The :class:`RunSummary` of the run directory ``path`` (named relative to ``root`` when given): a view of
    its :class:`~dtr_plugins.runs.record.RunRecord`, plus the lock, the checkpoints and the missing outputs."""
    run = RunDir(path)
    name = str(Path(path).relative_to(root)) if root is not None and Path(path) != Path(root) else str(path)
    record = run_record(run, name)
    train = [r for r in record.train if isinstance(r.get("loss"), (int, float))]
    ckpt = run.latest_checkpoint()
    ckpt_step = int(ckpt.stem) if ckpt is not None and ckpt.stem.isdigit() else None
    step = max([s for s in (train[-1]["step"] if train else None, ckpt_step) if s is not None], default=None)
    curves = {k: v for k, v in record.curves.items() if v and not k.startswith("heldout/band")}
    status, missing, note = _status(run, record)
    steps = (record.config.get("train") or {}).get("steps")
    return RunSummary(run=name, status=status, step=step, steps=steps if isinstance(steps, int) else None,
                      loss=float(train[-1]["loss"]) if train else None,
                      metrics={k: v[-1][1] for k, v in curves.items()},
                      metrics_step={k: v[-1][0] for k, v in curves.items()},
                      strategy=_routing_label(record.config.get("routing")),
                      backbone=_backbone_label(record.config.get("backbone")), missing=missing, note=note,
                      process=_process(dict(record.config)), heldout_target=_heldout_target(dict(record.meta)))


def _metric_order(key: str) -> tuple[int, str]:
    order = list(compared())
    return (order.index(key), key) if key in order else (len(order), key)


def _heldout_title(target: str | None) -> str:
    """``held-out loss (epsilon MSE)``: a held-out column names what it measures, so the epsilon MSE of a
    Gaussian run and the velocity MSE of a flow-matching run never share a column."""
    return f"held-out loss ({target or 'target ?'}{' MSE' if target else ''})"


def format_runs_table(runs: list[RunSummary]) -> str:
    """One aligned text table: run, status, step (of ``train.steps``), last loss, one column per metric any run
    has (latest value; the held-out loss one column per held-out target, see :func:`_heldout_title`), the step
    of the latest evaluation (FID etc.), process, strategy, backbone."""
    keys = sorted({k for r in runs for k in r.metrics}, key=_metric_order)
    targets = sorted({r.heldout_target or "" for r in runs}, key=lambda t: (t == "", t))
    columns: list[tuple[str, str, str | None]] = []  # (title, metric, held-out target it holds)
    for k in keys:
        if k.startswith("heldout/"):  # one column per target that some run has a value of
            held = [t for t in targets if any(k in r.metrics and (r.heldout_target or "") == t for r in runs)]
            columns += [(_heldout_title(t or None), k, t) for t in held]
        else:
            columns.append(((metric_info(k) or (k, ""))[0], k, None))
    evaluated = [k for k in keys if not k.startswith("heldout/")]
    headers = ["run", "status", "step", "loss", *[c[0] for c in columns], *(["eval step"] if evaluated else []),
               "process", "strategy", "backbone"]
    rows = []
    for r in runs:
        step = MISSING if r.step is None else str(r.step)
        if r.steps is not None:
            step += f"/{r.steps}"
        at = [r.metrics_step[k] for k in evaluated if k in r.metrics_step]  # the step the FID etc. are from
        cells = [fmt(r.metrics.get(k)) if t is None or (r.heldout_target or "") == t else MISSING
                 for _, k, t in columns]
        rows.append([r.run, r.status, step, fmt(r.loss), *cells,
                     *([fmt(max(at)) if at else MISSING] if evaluated else []), r.process, r.strategy, r.backbone])
    headers = [printable(h) for h in headers]  # values from files: no terminal escape sequence reaches the screen
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = set(range(2, 4 + len(columns) + (1 if evaluated else 0)))  # step, loss, metrics: right-aligned
    lines = []
    for row in [headers, *rows]:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
