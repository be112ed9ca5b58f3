"""The package's log output: one logger tree under ``dtr_plugins`` (modules use ``logging.getLogger(__name__)``).

A library user sees nothing unless they configure :mod:`logging` (the package logger has a ``NullHandler``,
added in ``dtr_plugins/__init__.py``); ``warnings.warn`` stays for what a user must see (a biased FID, ...).
The ``dtr`` command shows the log with :func:`console_logging` (the message only: INFO and DEBUG on stdout,
WARNING and above on stderr, printed through ``tqdm.write`` so an open progress bar stays intact).
A training run mirrors the same lines into ``<run>/train.log`` with :func:`run_log` for its duration, unless
its launcher already captures the process's output into that file (:data:`CAPTURED_ENV`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "dtr_plugins"

#: set by a launcher that writes the child's stdout and stderr into this file (the run's ``train.log``);
#: the child's :func:`run_log` then writes nothing itself, so each line is in the file once
CAPTURED_ENV = "DTR_LOG_CAPTURED"


def package_logger() -> logging.Logger:
    return logging.getLogger(PACKAGE)


#: False while a console asked for warnings and errors only (``dtr -q``): no progress bar is drawn
_BARS = {"on": True}


def show_progress(requested: bool = True) -> bool:
    """Whether a progress bar is drawn: the caller's ``progress`` argument, and no ``dtr -q`` console (see
    :func:`console_logging`). A library user turns bars off with ``progress=False``."""
    return bool(requested) and _BARS["on"]


class ConsoleHandler(logging.Handler):
    """The message of each record on the current ``sys.stdout`` (below WARNING) or ``sys.stderr`` (WARNING and
    above), looked up at each record (so a swapped stream, e.g. pytest's ``capsys``, is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001  # logging's own rule: a failing handler reports, never raises
            self.handleError(record)


@contextlib.contextmanager
def console_logging(level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Show the package's records of ``level`` and above on the console (plain messages) while the block runs;
    above INFO (``dtr -q``) no progress bar is drawn either (:func:`show_progress`). The logger's level and
    handlers, and the bars, are restored afterwards."""
    logger = package_logger()
    handler = ConsoleHandler(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_bars = logger.level, _BARS["on"]
    logger.setLevel(level)
    logger.addHandler(handler)
    _BARS["on"] = level <= logging.INFO
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        _BARS["on"] = old_bars


def captured_by_launcher(path: Path) -> bool:
    """Whether this process's output already goes into ``path`` (a launcher set :data:`CAPTURED_ENV` to it)."""
    captured = os.environ.get(CAPTURED_ENV)
    if not captured:
        return False
    try:
        return Path(captured).resolve() == Path(path).resolve()
    except OSError:
        return False


def _unconfigured(logger: logging.Logger) -> bool:
    """No level set on the package logger and no handler that would show its records (the root logger has none,
    the package logger only its ``NullHandler``): logging was left alone by the program."""
    return (logger.level == logging.NOTSET and not logging.getLogger().handlers
            and all(isinstance(h, logging.NullHandler) for h in logger.handlers))


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Append the package's records (the console's lines: the logger's level, message only) to ``path`` while the
    block runs; nothing when a launcher already captures this process's output into ``path``. Where logging is
    unconfigured (a plain Python program) the file still gets INFO and above, and nothing else shows them."""
    if captured_by_launcher(path):
        yield
        return
    logger = package_logger()
    handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level = logger.level
    if _unconfigured(logger):
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
