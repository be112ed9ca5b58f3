"""User-facing errors: the CLI prints their message as one line and exits with status 2."""
from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A mistake in the user's input (config, CLI, data, checkpoint). The message is the whole story."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override is invalid."""


class PluginError(UserError):
    """A plugin is unknown, duplicated or broken."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class DataError(UserError):
    """A dataset or sample folder cannot be read."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters, for one-line error reports."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def user_message(exc: BaseException) -> str:
    """The one line to show for ``exc``: its message, or -- for an error that torch re-raised from a
    DataLoader worker or pin-memory thread, whose message is ``"Caught DataError in DataLoader worker
    process 0.\\nOriginal Traceback ..."`` -- the first line of the original error's message.
    Other messages are returned unchanged."""
    text = str(exc)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        cls = type(exc)
        heads = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
        for line in reversed(text.splitlines()):
            for head in heads:
                if line.startswith(head):
                    return line[len(head):].strip()
    return text


#: errno -> what the one line says about the path
OS_ERRORS = {errno.ENOSPC: "no space left on the device; free space or choose another output_dir",
              errno.ENOTDIR: "a part of this path is a file, not a folder; choose another output_dir / name",
              errno.EEXIST: "already exists; choose another output_dir / name / --out",
              errno.EACCES: "permission denied; choose a folder you can write to",
              errno.EROFS: "read-only file system; choose a folder you can write to",
              errno.EISDIR: "is a folder, not a file",
              errno.ENAMETOOLONG: "a name in this path is too long; choose a shorter output_dir / name / --out"}


def os_error_line(exc: OSError) -> str | None:
    """The one line for an OSError the user can fix (full disk, a file where a folder goes, ...), else None."""
    what = OS_ERRORS.get(exc.errno or -1)
    if what is None:
        return None
    where = exc.filename if exc.filename is not None else "(while writing)"
    return f"{where}: {what} ({exc.strerror or os.strerror(exc.errno or 0)})"
