"""The output folder of ``dtr sample``: what ``--out`` may name and what ``--overwrite`` may replace.

``--overwrite`` only ever replaces a folder that holds an earlier sample set (the layout
:func:`dtr_plugins.sampling.sample.write_samples` writes: ``samples.json`` / ``samples.npz``, ``grid.png``,
``images/``), never a run directory, a folder with other files, a plain file, ``.`` or a folder that holds
the source run. Every refusal is one :class:`UserError` line naming ``--out``.
"""
from __future__ import annotations

from pathlib import Path

from dtr_plugins.core.errors import UserError

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
