"""The run directory (docs/design.md, "6. The run directory"): one object owns its layout and reading/writing its files.

::

    <run>/
      config.yaml          resolved config, as run
      meta.json            versions, git commit, device, world size, times, routed layer widths
      classes.json         the dataset's label space: {"num_classes", "classes" (name of each label), "labels_used"}
      metrics.jsonl        one line per log step, plus one per evaluation ({"step", "eval"})
      status.json          suite bookkeeping: {"state": running|done|failed, ...}
      train.log            a suite run's captured output
      config.sha256        a suite run's config fingerprint (suites rerun a run whose config changed)
      checkpoints/0002000.pt
      samples/             images/, grid.png, samples.npz, samples.json
      eval.json            the final evaluation
      .lock                held (``flock``) by the one ``dtr train`` writing the run: its pid and host

A suite folder ``<suite>/`` holds ``suite.json`` (its index: name, file, and per run its id, group, matrix
assignment and plan fingerprint; :class:`SuiteIndex`) beside its run directories.

This module is the one reader of these files: nothing else opens them by name.

metrics.jsonl is appended one whole line per ``os.write`` on an ``O_APPEND`` descriptor; a trailing line cut
by a crash or a full disk is dropped (with a warning) when the file is read or a run resumes.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtr_plugins.core.errors import CheckpointError, UserError, first_line
from dtr_plugins.core.io import clean_stale_temps, write_json, write_text

if TYPE_CHECKING:
    from dtr_plugins.core.config import ExperimentConfig

__all__ = ["RunDir", "RunLocked", "SuiteIndex", "is_suite_dir", "read_suite_index"]


class RunLocked(UserError):
    """Another process is writing this run directory."""


class RunDir:
    """Paths and files of one run directory ``path``; nothing is created until something is written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir:
        """The run a checkpoint file ``<run>/checkpoints/N.pt`` belongs to."""
        return cls(Path(checkpoint).parent.parent)

    @classmethod
    def locate(cls, source: str | Path) -> tuple[RunDir, Path]:
        """A run directory (its newest checkpoint) or one checkpoint file -> (its run, the checkpoint path).
        Raises :class:`CheckpointError` (one line) when ``source`` is neither or the run has no checkpoint."""
        source = Path(source)
        if source.is_dir():
            run = cls(source)
            return run, run.require_checkpoint()
        if source.is_file():
            return cls.of_checkpoint(source), source
        raise CheckpointError(f"{source}: no such run directory or checkpoint file")

    def config_of(self, ckpt: Any, ckpt_path: Path) -> ExperimentConfig:
        """The config that goes with the weights of ``ckpt`` (read from ``ckpt_path``), for every reader
        (``dtr sample``, ``dtr export``, ``from_pretrained``): the config the checkpoint itself holds (what
        trained those weights, also after a resume changed ``config.yaml``), else this run's ``config.yaml``.
        Raises :class:`CheckpointError` when there is neither, ConfigError when it does not validate."""
        from dtr_plugins.core.config import config_from_dict, read_yaml

        if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
            return config_from_dict(ckpt["config"], source=f"{ckpt_path} (config)")
        if self.config_path.is_file():
            return config_from_dict(read_yaml(self.config_path), source=str(self.config_path))
        raise CheckpointError(f"{ckpt_path}: checkpoint holds no config and {self.config_path} does not exist")

    # ------------------------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def classes_path(self) -> Path:
        return self.path / "classes.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def fingerprint_path(self) -> Path:
        return self.path / "config.sha256"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"{int(step):07d}.pt"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint of the highest step (names are zero-padded steps), or None."""
        ckpts = sorted(self.checkpoints.glob("*.pt"))
        return ckpts[-1] if ckpts else None

    def require_checkpoint(self) -> Path:
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise CheckpointError(f"{self.path}: no checkpoint in {self.checkpoints}")
        return ckpt

    def has_checkpoints(self) -> bool:
        return self.latest_checkpoint() is not None

    # ------------------------------------------------------------------------------ read / write
    def write_config(self, yaml_text: str) -> Path:
        return write_text(self.config_path, yaml_text)

    def read_config(self) -> dict[str, Any]:
        """The raw config mapping of config.yaml ({} when there is none)."""
        import yaml

        if not self.config_path.exists():
            return {}
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return {}  # damaged: see unreadable()
        return data if isinstance(data, dict) else {}

    def read_meta(self) -> dict[str, Any]:
        return _read_json(self.meta_path)

    def write_meta(self, meta: dict[str, Any]) -> Path:
        return write_json(self.meta_path, meta)

    def write_classes(self, classes: dict[str, Any]) -> Path:
        """``classes.json`` (:func:`dtr_plugins.core.labels.class_map`)."""
        return write_json(self.classes_path, classes)

    def read_classes(self) -> dict[str, Any]:
        return _read_json(self.classes_path)

    def class_names(self) -> list[str] | None:
        """The name of each label (``classes.json``), or None when the model ignored labels (unconditional) or
        the run has no such file."""
        info = self.read_classes()
        names = info.get("classes")
        if not isinstance(names, list) or not info.get("labels_used"):
            return None
        return [str(n) for n in names]

    def update_meta(self, **fields: Any) -> Path:
        return self.write_meta({**self.read_meta(), **fields})

    def read_status(self) -> dict[str, Any]:
        return _read_json(self.status_path)

    def write_status(self, status: dict[str, Any]) -> Path:
        return write_json(self.status_path, status)

    def read_fingerprint(self) -> str | None:
        """The plan fingerprint a suite started this run with (``config.sha256``), or None."""
        if not self.fingerprint_path.is_file():
            return None
        return self.fingerprint_path.read_text().strip() or None

    def write_fingerprint(self, fingerprint: str) -> Path:
        return write_text(self.fingerprint_path, fingerprint + "\n")

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record as one whole line: a single ``os.write`` on an ``O_APPEND`` descriptor.

        A write that stores only part of the line (a full disk) is cut back to where it started and the
        OSError is raised, so no later append extends a partial line.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(record) + "\n").encode("utf-8")
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
            except OSError:
                _truncate(fd, start)
                raise
            if written != len(data):
                _truncate(fd, start)
                raise OSError(f"{self.metrics_path}: short write ({written} of {len(data)} bytes); disk full?")
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl. A trailing line without its newline (cut by a crash or a full disk)
        is dropped with a warning; an unreadable line elsewhere is skipped, the rest still counts."""
        out = []
        for line in self._complete_lines():
            line = line.strip()
            if line:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):  # a damaged line may still parse (a number, a list): skipped too
                    out.append(record)
        return out

    def last_step(self) -> int | None:
        """The ``step`` of the newest complete record of metrics.jsonl (None before the first), read from the end
        of the file backwards whatever the length of its last lines (an evaluation record can be long); a line
        still being written (no newline yet) is not counted."""
        try:
            f = open(self.metrics_path, "rb")  # noqa: SIM115  # read backwards in blocks below
        except FileNotFoundError:
            return None
        with f:
            end = f.seek(0, os.SEEK_END)
            pos, size = end, 65536
            while pos > 0:
                pos, size = max(0, end - size), size * 2  # a window twice as long each time: linear in all
                f.seek(pos)
                tail = f.read(end - pos)
                lines = tail.split(b"\n")
                complete = lines[1:-1] if pos > 0 else lines[:-1]  # the first may be cut, the last is unfinished
                for line in reversed(complete):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and isinstance(record.get("step"), int):
                        return int(record["step"])
        return None

    def unreadable(self) -> str | None:
        """The name of the first record file of this run (status.json, meta.json, config.yaml, metrics.jsonl)
        that exists but cannot be read whole: not JSON / YAML, not a mapping, or a metrics.jsonl line that is not
        a JSON object (a cut last line is a crash's, not damage). None when all can be read."""
        import yaml

        for path in (self.status_path, self.meta_path):
            if path.exists() and not isinstance(_load_json(path), dict):
                return path.name
        if self.config_path.exists():
            try:
                if not isinstance(yaml.safe_load(self.config_path.read_text()), dict):
                    return self.config_path.name
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                return self.config_path.name
        for line in self._complete_lines():
            try:
                if line.strip() and not isinstance(json.loads(line), dict):
                    return self.metrics_path.name
            except json.JSONDecodeError:
                return self.metrics_path.name
        return None

    def _complete_lines(self) -> list[str]:
        if not self.metrics_path.exists():
            return []
        text = self.metrics_path.read_bytes().decode("utf-8", errors="replace")
        lines = text.split("\n")
        if lines[-1]:
            warnings.warn(f"{self.metrics_path}: dropping a cut last line ({len(lines[-1])} characters without "
                          "a newline)", stacklevel=3)
        return lines[:-1]

    def truncate_metrics(self, step: int, *, drop_eval_at_step: bool = False) -> int:
        """Keep only the records of steps ``<= step`` (and drop a cut last line); rewritten atomically.

        A resume from the checkpoint of ``step`` calls this, so steps logged between that checkpoint and a
        crash are not recorded twice; ``drop_eval_at_step`` also drops the evaluation record of ``step`` itself
        (before that evaluation is redone). Returns the number of records dropped.
        """
        if not self.metrics_path.exists():
            return 0
        keep, dropped = [], 0
        raw = self.metrics_path.read_bytes().decode("utf-8", errors="replace")
        for line in self._complete_lines():
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                record = None
            at = record.get("step") if isinstance(record, dict) else None
            eval_here = drop_eval_at_step and at == step and isinstance(record, dict) and "eval" in record
            if isinstance(at, int) and (at > step or eval_here):
                dropped += 1
                continue
            if line.strip():
                keep.append(line + "\n")
        text = "".join(keep)
        if text != raw:
            write_text(self.metrics_path, text)
        return dropped

    # ---------------------------------------------------------------------------------- outputs
    def missing_outputs(self, cfg: ExperimentConfig) -> list[str]:
        """The outputs ``cfg`` asks for that this run does not have yet (paths relative to the run); [] = done.

        - ``checkpoints/<train.steps>.pt``: training reached its last step;
        - ``eval.json`` and ``samples/samples.npz`` when ``eval.at_end`` or ``eval.every`` (the final evaluation
          writes both).
        """
        missing = []
        final = self.checkpoint_path(cfg.train.steps)
        if not final.exists():
            missing.append(str(final.relative_to(self.path)))
        if cfg.eval.at_end or cfg.eval.every:
            for path in (self.eval_path, self.samples / "samples.npz"):
                if not path.exists():
                    missing.append(str(path.relative_to(self.path)))
        return missing

    # ------------------------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``<run>/.lock`` (``fcntl.flock``, exclusive, non-blocking) while the block runs.

        The OS releases the lock when the holder exits or dies, so a stale lock file never blocks a new
        run. Raises :class:`RunLocked` (one line, with the holder's pid and host) when another process has it, and
        :class:`UserError` (one line with the errno text) when ``flock`` fails otherwise (``ENOLCK`` on a file system
        without locks).
        """
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # not "held": flock failed
                    raise UserError(f"{self.path}: cannot lock the run directory ({self.lock_path}): flock failed: "
                                    f"{os.strerror(exc.errno) if exc.errno else exc} (the file system may not "
                                    "support locks, e.g. some NFS mounts; use a local output_dir)") from None
                holder = os.pread(fd, 256, 0).decode("utf-8", errors="replace").strip() or "another process"
                raise RunLocked(f"{self.path}: run directory is in use by {holder}, another dtr process (lock "
                                f"{self.lock_path}); wait for it to finish or stop it") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            for folder in (self.checkpoints, self.path / "plots"):  # what a killed run left half-written
                clean_stale_temps(folder)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def write_eval(self, result: dict[str, Any]) -> Path:
        return write_json(self.eval_path, result)

    def read_eval(self) -> dict[str, Any]:
        """The final evaluation (``eval.json``), {} when there is none or it does not parse."""
        return _read_json(self.eval_path)


SUITE_INDEX = "suite.json"


def is_suite_dir(path: str | Path) -> bool:
    """Does ``path`` hold a suite index (``suite.json``)?"""
    return (Path(path) / SUITE_INDEX).is_file()


class SuiteIndex:
    """A suite folder's index ``<suite>/suite.json``: ``{"name", "file", "runs": [{"id", "group", "assignment",
    "fingerprint"}]}``, written by ``dtr suite`` before its runs start."""

    def __init__(self, suite_dir: str | Path):
        self.root = Path(suite_dir)
        self.path = self.root / SUITE_INDEX

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> dict[str, Any]:
        """The index; raises :class:`UserError` (one line naming the file) when the folder has none, it does not
        parse or it is not of that shape (:func:`read_suite_index`)."""
        return read_suite_index(self.root)

    def entries(self) -> list[dict[str, Any]]:
        """The index's run entries that name an id (others are skipped)."""
        runs = self.read().get("runs")
        if not isinstance(runs, list):
            return []
        return [e for e in runs if isinstance(e, dict) and isinstance(e.get("id"), str)]

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.root / run_id)

    def write(self, index: dict[str, Any]) -> Path:
        return write_json(self.path, index)


def _truncate(fd: int, size: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, size)


def _load_json(path: Path) -> Any:
    """The JSON value of ``path``, or None when it cannot be read or decoded."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _read_json(path: Path) -> dict[str, Any]:
    data = _load_json(path) if path.exists() else None
    return data if isinstance(data, dict) else {}


def read_suite_index(suite_dir: str | Path) -> dict[str, Any]:
    """``suite.json`` of a suite folder: ``{"name", "runs": [{"id", "group", ...}, ...], ...}``.

    Raises :class:`UserError` (one line naming the file) when it is missing, not JSON, or not of that shape."""
    suite_dir = Path(suite_dir)
    path = suite_dir / "suite.json"
    if not path.exists():
        raise UserError(f"{suite_dir}: not a suite folder (no suite.json; run `dtr suite SUITE.yaml` first)")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({first_line(exc)}); run `dtr suite SUITE.yaml` again to rewrite "
                        "it") from None
    runs = index.get("runs") if isinstance(index, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in runs):
        raise UserError(f"{path}: not a suite index (expected an object with a list of runs, each with an id); run "
                        "`dtr suite SUITE.yaml` again to rewrite it")
    return index
