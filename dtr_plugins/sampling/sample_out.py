"""The output folder of ``dtr sample``: what ``--out`` may name and what ``--overwrite`` may replace.

``--overwrite`` only ever replaces a folder that holds an earlier sample set (the layout
:func:`dtr_plugins.sampling.sample.write_samples` writes: ``samples.json`` / ``samples.npz``, ``grid.png``,
``images/``), never a run directory, a folder with other files, a plain file, ``.`` or a folder that holds
the source run. Every refusal is one :class:`UserError` line naming ``--out``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from dtr_plugins.core.errors import UserError
from dtr_plugins.core.sampling_settings import SamplingSettings
from dtr_plugins.runs.rundir import RunDir

#: the entries a sample set folder holds (write_samples); a folder with anything else is not one
SAMPLE_SET_ENTRIES = frozenset({"samples.json", "samples.npz", "grid.png", "images"})


def is_sample_set(folder: Path) -> bool:
    """True for a folder written by ``dtr sample``: ``samples.json`` or ``samples.npz`` and nothing but
    :data:`SAMPLE_SET_ENTRIES` (``images/`` holding only PNG files)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    names = {p.name for p in folder.iterdir()}
    if not names <= SAMPLE_SET_ENTRIES or not names & {"samples.json", "samples.npz"}:
        return False
    for name in names - {"images"}:
        if not (folder / name).is_file():
            return False
    images = folder / "images"
    if "images" not in names:
        return True
    return images.is_dir() and not images.is_symlink() and all(
        p.is_file() and p.suffix == ".png" for p in images.iterdir())


def check_out(out: Path, *, overwrite: bool, sources: tuple[Path, ...] = ()) -> None:
    """Refuse an ``--out`` that sampling must not write to or replace (UserError, one line).

    ``sources``: the run directory and checkpoint sampled from; ``out`` may lie inside the run (its
    ``samples/``) but may not be the run, nor a folder that holds it.
    """
    if out.name in ("", ".", "..") or out.resolve() == out.resolve().parent:
        raise UserError(f"--out {out}: name a new folder for the samples (not '.', '..' or '/')")
    resolved = out.resolve()
    for parent in resolved.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out {out}: {parent} is a file, not a folder; choose another --out")
    for src in sources:
        src = src.resolve()
        if resolved == src or resolved in src.parents:
            raise UserError(f"--out {out}: this is (or holds) the run sampled from ({src}); "
                            f"choose a new folder, e.g. <run>/samples/NAME")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"--out {out}: is a file, not a sample folder; choose a new folder "
                        f"(--overwrite replaces only an earlier sample set)")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"--out {out}: already holds files; choose a new folder or pass --overwrite "
                        f"(Python: overwrite=True) to replace it")
    if not is_sample_set(out):
        raise UserError(f"--out {out}: holds files that are not a sample set (samples.json / samples.npz, "
                        f"grid.png, images/); --overwrite replaces only an earlier sample set, choose a new folder")


def default_out(run: RunDir, settings: SamplingSettings, *, step: int | None, profile: str | None = None) -> Path:
    """``<run>/samples/step0000800-ddim25-cfg2.0-seed0-n64``: a folder per sampling setting, never the
    training-time evaluation samples (``<run>/samples/*.npz``); the solver part is :meth:`SamplingSettings.describe`
    (``dopri5-atol1e-06-rtol0.001``, ``euler50-shift3``...); ``profile`` (the EMA profile of an EMA snapshot
    or post-hoc EMA file, e.g. ``posthoc-sigma0.050``) is appended as ``-ema-<profile>``."""
    labels, steps = settings.labels, settings.describe()
    name = f"step{step:07d}" if step is not None else "stepNA"
    name += f"-{steps}-cfg{float(settings.cfg_scale)}-seed{settings.seed}-n{settings.num_samples}"
    if not settings.use_ema:
        name += "-raw"
    elif profile:
        name += f"-ema-{profile}"
    if labels is not None:
        name += "-labels" + hashlib.sha256(",".join(map(str, labels)).encode()).hexdigest()[:8]
    if settings.prompts is not None:
        name += "-prompts" + hashlib.sha256("\n".join(settings.prompts).encode()).hexdigest()[:8]
    return run.samples / name


def swap_into_place(partial: Path, out_dir: Path) -> None:
    """Rename the finished ``partial`` folder to ``out_dir``; an old ``out_dir`` is removed only afterwards."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    partial.rename(out_dir)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
