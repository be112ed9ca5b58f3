"""Atomic file writes: a temp file in the same folder, then ``os.replace``; a crash never leaves half a file."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def creatable_folder_problem(path: str | Path) -> str | None:
    """Why the folder ``path`` could not be created (or written, when it exists) by this process, or None.

    Tries the nearest existing folder on the way up: it must be a folder in which this process can make a
    folder (an empty temporary one, removed at once: nothing is left behind)."""
    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{str(existing)!r} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".dtr-check-", dir=existing))
    except OSError as exc:
        return f"cannot create folders in {str(existing)!r} ({exc.strerror or exc}), so {str(path)!r} cannot be written"
    return None


#: ``.<name>.<host>-<pid>.<random>.tmp``: the temp files of :func:`atomic_path`, named by their writer
_TEMP = re.compile(r"\..+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp")


def owner_tag() -> str:
    """``<host>-<pid>`` of this process (host letters, digits and ``_`` only), put in temp names so a later
    process can tell whether their writer is still alive."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', socket.gethostname())}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temp files of :func:`atomic_path` in ``folder`` whose writer died on this host (a kill
    mid-write leaves them; each can be as large as a checkpoint); returns what was removed. A temp file of
    a live process, or of another host, is left alone."""
    host = owner_tag().rsplit("-", 1)[0]
    removed = []
    for path in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else []:
        match = _TEMP.fullmatch(path.name)
        if match and match["host"] == host and not pid_alive(int(match["pid"])) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def clean_dead_partials(out: Path) -> None:
    """Remove ``.<out>.partial-<pid>`` folders beside ``out`` whose writer is no longer alive (killed before
    it could clean up); a live writer's folder is left alone."""
    for folder in out.parent.glob(f".{out.name}.partial-*") if out.parent.is_dir() else []:
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically. A write that fails part-way (torch's ``RuntimeError``: ``unexpected pos``,
    ``failed writing``: a full disk) is raised as an :class:`OSError` ``ENOSPC`` naming ``path``."""
    import errno

    import torch

    def save(tmp: Path) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            if "unexpected pos" not in str(exc) and "failed writing" not in str(exc):
                raise
            raise OSError(errno.ENOSPC, "the write stopped part-way; is the disk full?", str(path)) from None

    return atomic_write(path, save)


def save_figure(fig: Figure, path: str | Path, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (the format follows ``path``'s suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, remembered per path, size and modification time."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
