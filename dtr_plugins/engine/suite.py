"""Ablation suites: a base config times a matrix of changes, each run in its own process, then a report.

Rerunning a suite skips finished runs, resumes interrupted ones from their last checkpoint and retries
failed ones. Everything lives under ``<output_dir>/<suite name>/``.

Each run is keyed by its id *and* by the fingerprint of its resolved config (:func:`config_fingerprint`,
recorded in the run's ``status.json``). A run that exists with another fingerprint (the suite's ``set:``,
its base config or ``--set`` changed since) is never skipped nor resumed silently: the suite refuses
before any run starts, with one line naming the runs, unless ``rerun_changed`` (``--rerun-changed``)
is given; then the old run folder is moved aside to ``<id>.stale-<old fp8>`` and the run trains anew.
"""
from __future__ import annotations

import copy
import fnmatch
import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dtr_plugins.core.config import (
    PLUGIN_SECTIONS,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    read_yaml,
    set_dotted,
)
from dtr_plugins.core.errors import ConfigError, UserError
from dtr_plugins.core.io import write_json, write_text
from dtr_plugins.core.plugins import format_validation_error

from .rundir import RunDir


class SuiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    base: str | dict[str, Any]
    set: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    eval: dict[str, Any] = Field(default_factory=dict)
    output_dir: str = "runs"


@dataclass
class PlannedRun:
    id: str
    assignment: dict[str, Any]
    config: ExperimentConfig
    group: str = ""  # the id without the seed: runs of one group differ only by seed

    @property
    def fingerprint(self) -> str:
        return config_fingerprint(self.config)


def config_fingerprint(cfg: ExperimentConfig) -> str:
    """sha256 of the resolved config (defaults filled in, keys sorted): what determines a run's content."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Suite:
    name: str
    path: Path
    root: Path
    runs: list[PlannedRun] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- ids
def _initials(key: str) -> str:
    return "".join(part[0] for part in key.split("_") if part)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_fmt(v) for v in value)
    return str(value)


#: sections whose labels always carry their parameters (they are what an ablation varies)
_LABEL_PARAMS = ("routing", "loss_weighting")


def value_label(key: str, value: Any, full: bool | None = None) -> str:
    """A short readable label: ``dtr-a4-b0.8`` for a routing, ``dit-S2`` for a backbone, ``seed0`` / ``lr0.001``.

    ``full`` adds every parameter of a section (used when short labels of one axis would collide).
    """
    if isinstance(value, dict):
        head = str(value.get("name", key))
        for tag in ("size", "preset"):
            if tag in value:
                head += "-" + str(value[tag]).replace("/", "")
        if full is None:
            full = key in _LABEL_PARAMS
        skip = ("name", "size", "preset")
        parts = [f"{_initials(k)}{_fmt(v)}" for k, v in value.items() if k not in skip] if full else []
        return "-".join([head, *parts])
    leaf = key.split(".")[-1]
    return f"{leaf}{_fmt(value)}"


def axis_labels(key: str, values: list[Any]) -> list[str]:
    """Labels for one matrix axis: short where that is unambiguous, with all parameters where not."""
    short = [value_label(key, v) for v in values]
    return [value_label(key, v, full=True) if short.count(lbl) > 1 else lbl for v, lbl in zip(values, short)]


# ---------------------------------------------------------------------------------------- expand
def _matches(assignment: dict[str, Any], partial: dict[str, Any]) -> bool:
    """Does ``assignment`` agree with the partial one? ``routing.name: dtr`` matches a routing section."""
    for key, want in partial.items():
        if key in assignment:
            if assignment[key] != want:
                return False
            continue
        section, _, sub = key.partition(".")
        got = assignment.get(section)
        if isinstance(got, dict) and sub:
            if got.get(sub) != want:
                return False
            continue
        return False
    return True


def _apply(data: dict[str, Any], key: str, value: Any) -> None:
    if (key in PLUGIN_SECTIONS or key in ("diffusion", "train", "sample", "eval", "vae")) and isinstance(value, dict):
        data[key] = copy.deepcopy(value)  # a section name with a mapping replaces the section
        return
    set_dotted(data, key, copy.deepcopy(value), source=key)


def load_suite(path: str | Path, registry=None, overrides: Sequence[str] = ()) -> Suite:
    """Read and validate a suite file and expand its matrix into planned runs (validated configs).

    ``overrides`` (``--set key=value``) apply to every run, after the suite's ``set:`` and the matrix; a
    key the matrix varies is refused. An ``exclude`` entry that matches no run is refused (ConfigError).
    """
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with name, base and matrix")
    try:
        spec = SuiteFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, SuiteFile)}") from None
    if isinstance(spec.base, str):
        base_path = (path.parent / spec.base).resolve()
        base = read_yaml(base_path)
        if not isinstance(base, dict):
            raise ConfigError(f"{path}: base: {spec.base} is not a run config mapping")
    else:
        base = copy.deepcopy(spec.base)
    for key, value in spec.set.items():
        _apply(base, key, value)
    if spec.eval:
        base.setdefault("eval", {}).update(copy.deepcopy(spec.eval))
    for key, values in spec.matrix.items():
        if not values:
            raise ConfigError(f"{path}: matrix.{key}: needs at least one value")
    for i, partial in enumerate(spec.exclude):
        unknown = [k for k in partial if k not in spec.matrix and k.partition(".")[0] not in spec.matrix]
        if unknown:
            raise ConfigError(f"{path}: exclude.{i}: key {unknown[0]!r} is not a matrix key "
                              f"(matrix keys: {', '.join(spec.matrix)})")

    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in spec.matrix:
            raise ConfigError(f"--set {item}: {key} is a matrix key of {path}; it cannot be set for every run")
    root = Path(spec.output_dir) / spec.name
    suite = Suite(name=spec.name, path=path, root=root)
    keys = list(spec.matrix)
    seen: dict[str, int] = {}
    labels_of = {k: axis_labels(k, spec.matrix[k]) for k in keys}
    used = [False] * len(spec.exclude)
    for combo in itertools.product(*(range(len(spec.matrix[k])) for k in keys)):
        assignment = {k: spec.matrix[k][i] for k, i in zip(keys, combo)}
        hits = [i for i, partial in enumerate(spec.exclude) if _matches(assignment, partial)]
        for i in hits:
            used[i] = True
        if hits:
            continue
        labels = [labels_of[k][i] for k, i in zip(keys, combo)]
        run_id = "__".join(labels) or "base"
        if run_id in seen:
            seen[run_id] += 1
            run_id = f"{run_id}__{seen[run_id]}"
        else:
            seen[run_id] = 0
        group = "__".join(lbl for k, lbl in zip(keys, labels) if k != "seed") or "base"
        data = copy.deepcopy(base)
        for key, value in assignment.items():
            _apply(data, key, value)
        data["name"] = run_id
        data["output_dir"] = str(root)
        data = apply_overrides(data, overrides)
        where = f"{path} (run {run_id})"
        cfg = config_from_dict(data, source=where, registry=registry)
        suite.runs.append(PlannedRun(id=run_id, assignment=assignment, config=cfg, group=group))
    for i, hit in enumerate(used):
        if not hit:
            raise ConfigError(f"{path}: exclude.{i}: {spec.exclude[i]} matches no run of the matrix "
                              f"(check its values against matrix)")
    return suite


# ------------------------------------------------------------------------------------------ state
def run_state(run_dir: Path) -> str:
    """``done``, ``failed``, ``partial`` (has checkpoints) or ``new``."""
    run = RunDir(run_dir)
    state = run.read_status().get("state")
    if state in ("done", "failed"):
        return state
    return "partial" if run.has_checkpoints() else "new"


def recorded_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint a run was trained with: ``status.json``'s, else that of its ``config.yaml``."""
    run = RunDir(run_dir)
    fp = run.read_status().get("fingerprint")
    if fp:
        return str(fp)
    if run.config_path.exists():
        try:
            return config_fingerprint(config_from_dict(read_yaml(run.config_path), source=str(run.config_path)))
        except UserError:
            return "unreadable"
    return None


def changed_runs(suite: Suite, runs: list[PlannedRun]) -> list[tuple[PlannedRun, str]]:
    """Runs that were finished (or have checkpoints to resume) with another config: (run, old fingerprint)."""
    out = []
    for r in runs:
        run_dir = suite.root / r.id
        if run_state(run_dir) not in ("done", "partial") and not RunDir(run_dir).has_checkpoints():
            continue
        old = recorded_fingerprint(run_dir)
        if old is not None and old != r.fingerprint:
            out.append((r, old))
    return out


def _move_aside(run_dir: Path, old_fp: str) -> Path:
    stale = run_dir.with_name(f"{run_dir.name}.stale-{old_fp[:8]}")
    n = 1
    while stale.exists():
        n += 1
        stale = run_dir.with_name(f"{run_dir.name}.stale-{old_fp[:8]}-{n}")
    run_dir.rename(stale)
    return stale


def last_step(metrics_path: Path) -> int | None:
    """The newest ``step`` in a metrics.jsonl (its last 8 KiB), or None."""
    if not metrics_path.exists():
        return None
    with open(metrics_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 8192))
        tail = f.read().decode(errors="replace").splitlines()
    for line in reversed(tail):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def _error_line(log_path: Path, returncode: int) -> str:
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()[-200:] if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("dtr: error:")]
    if errors:
        return errors[-1][len("dtr: error:"):].strip()
    lines = [ln for ln in lines if "warning" not in ln.lower()]
    return lines[-1] if lines else f"exit status {returncode}"


def _launch(run: PlannedRun, suite: Suite, gpu: int | None, threads: int | None = None,
            progress_every: float = 30.0) -> dict[str, Any]:
    """Train one run in a child process; its stdout and stderr stream into ``train.log`` as they come,
    and every ``progress_every`` seconds one line gives its step (from metrics.jsonl) out of train.steps."""
    rd = RunDir(suite.root / run.id)
    rd.path.mkdir(parents=True, exist_ok=True)
    config_path = suite.root / "configs" / f"{run.id}.yaml"
    write_text(config_path, run.config.to_yaml())
    resume = rd.has_checkpoints()
    cmd = [sys.executable, "-m", "dtr_plugins", "train", str(config_path), "--run-dir", str(rd.path)]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    elif threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # CPU runs side by side share the cores
        cmd += ["--threads", str(threads)]
    fp = run.fingerprint
    rd.write_status({"state": "running", "resumed": resume, "fingerprint": fp, "threads": threads})
    print(f"start    {run.id} (log: {rd.log_path})", flush=True)
    started = time.time()
    total = run.config.train.steps
    with open(rd.log_path, "a", buffering=1) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                proc.wait(timeout=progress_every)
                break
            except subprocess.TimeoutExpired:
                step = last_step(rd.metrics_path)
                print(f"running  {run.id}: step {step if step is not None else 0}/{total} "
                      f"({time.time() - started:.0f}s, log: {rd.log_path})", flush=True)
    seconds = round(time.time() - started, 1)
    if proc.returncode == 0:
        status = {"state": "done", "seconds": seconds, "resumed": resume}
    else:
        status = {"state": "failed", "seconds": seconds, "returncode": proc.returncode,
                  "error": _error_line(rd.log_path, proc.returncode)}
    rd.write_status({**status, "fingerprint": fp, "threads": threads})
    return status


def run_suite(path: str | Path, *, dry_run: bool = False, only: str | None = None, parallel: int = 1,
              report: bool = True, registry=None, overrides: Sequence[str] = (), rerun_changed: bool = False,
              progress_every: float = 30.0) -> Path:
    """Run every planned run that is not finished yet, then build the report; returns the suite folder.

    Refuses (ConfigError, before any run starts) when a finished or resumable run's recorded config
    fingerprint differs from the planned one, unless ``rerun_changed``: then the old folder is moved to
    ``<id>.stale-<fp8>`` and the run trains anew. With ``parallel > 1`` on a machine without GPUs each
    child gets ``cpu_count // parallel`` threads (``--threads``).
    """
    suite = load_suite(path, registry=registry, overrides=overrides)
    runs = [r for r in suite.runs if only is None or fnmatch.fnmatch(r.id, only)]
    if only is not None and not runs:
        raise UserError(f"--only {only!r} matches none of: {', '.join(r.id for r in suite.runs)}")
    changed = changed_runs(suite, runs)
    if dry_run:
        stale = {r.id for r, _ in changed}
        for r in runs:
            state = "changed" if r.id in stale else run_state(suite.root / r.id)
            print(f"{state:8s} {r.id}")
        return suite.root
    if changed and not rerun_changed:
        names = ", ".join(f"{r.id} ({old[:8]} -> {r.fingerprint[:8]})" for r, old in changed)
        raise ConfigError(f"{suite.path}: {len(changed)} run(s) exist with a different config: {names}; pass "
                          f"--rerun-changed to move them aside (<id>.stale-<fp8>) and train them anew")
    for r, old in changed:
        print(f"stale    {r.id} -> {_move_aside(suite.root / r.id, old).name} (config changed)")
    suite.root.mkdir(parents=True, exist_ok=True)
    write_json(suite.root / "suite.json", {"name": suite.name, "file": str(suite.path),
                                           "runs": [{"id": r.id, "group": r.group, "assignment": r.assignment,
                                                     "fingerprint": r.fingerprint} for r in suite.runs]})
    todo = [r for r in runs if run_state(suite.root / r.id) != "done"]
    for r in runs:
        if r not in todo:
            print(f"skip     {r.id} (finished)")
    gpus = _gpu_count()
    width = max(1, parallel)
    lock = threading.Lock()
    free_gpus = list(range(gpus))

    def work(run: PlannedRun) -> tuple[PlannedRun, dict[str, Any]]:
        gpu = None
        if gpus and width > 1:
            with lock:
                gpu = free_gpus.pop(0) if free_gpus else None
        threads = max(1, (os.cpu_count() or 1) // width) if not gpus and width > 1 else None
        try:
            status = _launch(run, suite, gpu, threads, progress_every)
        finally:
            if gpu is not None:
                with lock:
                    free_gpus.append(gpu)
        tail = f" ({status['error']})" if status["state"] == "failed" else f" in {status['seconds']}s"
        print(f"{status['state']:8s} {run.id}{tail}", flush=True)
        return run, status

    with ThreadPoolExecutor(max_workers=width) as pool:
        results = list(pool.map(work, todo))
    failed = [r.id for r, s in results if s["state"] == "failed"]
    if report:
        from .report import build_report

        out = build_report(suite.root)
        print(f"report: {out}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their train.log; rerun the suite to retry)")
    return suite.root


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()
