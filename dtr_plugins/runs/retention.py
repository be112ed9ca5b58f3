"""Checkpoint retention: list a run's checkpoints by step and keep only the last few (``train.keep_last``).

A checkpoint of a large DiT with optimizer and EMA state is several GB, so long runs keep only the newest
``keep_last``. Pruning is safe to call right after a checkpoint was saved (``save_checkpoint`` writes a
temp file and renames it, so a file named ``*.pt`` is complete):

- only *complete* checkpoints count: a file that is empty or whose zip directory (``torch.save``'s
  format) cannot be read is never counted as one of the kept ones (and never deleted: it is evidence);
- the newest complete checkpoint is never deleted, whatever ``keep_last`` says, so a run always keeps
  one good checkpoint to resume or sample from;
- deletion goes oldest first, one ``unlink`` at a time; an interruption leaves a run with more
  checkpoints than asked, never fewer.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

from dtr_plugins.core.errors import ConfigError

_STEP = re.compile(r"^(\d+)\.pt$")


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The ``<step>.pt`` files of ``ckpt_dir``, oldest (lowest step) first; temp files and others ignored."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_file() and (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found)]


def is_complete_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a non-empty ``torch.save`` zip archive whose central directory reads (cheap:
    a truncated or overwritten file fails; tensor contents are not read)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def prune_checkpoints(ckpt_dir: str | Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints of ``ckpt_dir``; returns the deleted paths.

    ``keep_last``: ``None`` or ``0`` keeps everything; otherwise at least 1. Incomplete files are neither
    counted nor deleted. Raises :class:`ConfigError` for a negative ``keep_last``.
    """
    if keep_last is None or keep_last == 0:
        return []
    if keep_last < 0:
        raise ConfigError(f"train.keep_last: {keep_last} is negative (allowed: 0 or unset = keep all, N >= 1)")
    complete = [p for p in list_checkpoints(ckpt_dir) if is_complete_checkpoint(p)]
    doomed = complete[:-keep_last]
    deleted = []
    for path in doomed:  # oldest first
        path.unlink(missing_ok=True)
        deleted.append(path)
    return deleted
