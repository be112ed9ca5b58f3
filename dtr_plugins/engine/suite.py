"""Ablation suites: a base config times a matrix of changes, each run in its own process, then a report.

Rerunning a suite skips finished runs, resumes interrupted ones from their last checkpoint and retries
failed ones. Everything lives under ``<output_dir>/<suite name>/``.
"""
from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dtr_plugins.core.config import PLUGIN_SECTIONS, ExperimentConfig, config_from_dict, read_yaml, set_dotted
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
        parts = [f"{_initials(k)}{_fmt(v)}" for k, v in value.items() if k not in ("name", "size", "preset")] if full else []
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
    if key in PLUGIN_SECTIONS or key in ("diffusion", "train", "sample", "eval", "vae"):
        if isinstance(value, dict):
            data[key] = copy.deepcopy(value)  # a section name with a mapping replaces the section
            return
    set_dotted(data, key, copy.deepcopy(value), source=key)


def load_suite(path: str | Path, registry=None) -> Suite:
    """Read and validate a suite file and expand its matrix into planned runs (validated configs)."""
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

    root = Path(spec.output_dir) / spec.name
    suite = Suite(name=spec.name, path=path, root=root)
    keys = list(spec.matrix)
    seen: dict[str, int] = {}
    labels_of = {k: axis_labels(k, spec.matrix[k]) for k in keys}
    for combo in itertools.product(*(range(len(spec.matrix[k])) for k in keys)):
        assignment = {k: spec.matrix[k][i] for k, i in zip(keys, combo)}
        if any(_matches(assignment, partial) for partial in spec.exclude):
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
        where = f"{path} (run {run_id})"
        cfg = config_from_dict(data, source=where, registry=registry)
        suite.runs.append(PlannedRun(id=run_id, assignment=assignment, config=cfg, group=group))
    return suite


# ------------------------------------------------------------------------------------------ state
def run_state(run_dir: Path, cfg: ExperimentConfig | None = None) -> str:
    """``done``, ``failed``, ``partial`` (has checkpoints) or ``new``. With ``cfg``, a run is ``done`` only when
    every output it asks for exists (:meth:`RunDir.missing_outputs`); otherwise it is resumed to redo them."""
    run = RunDir(run_dir)
    state = run.read_status().get("state")
    if state == "done" and cfg is not None and run.missing_outputs(cfg):
        return "partial"
    if state in ("done", "failed"):
        return state
    return "partial" if run.has_checkpoints() else "new"


def _launch(run: PlannedRun, suite: Suite, gpu: int | None, threads: int | None = None) -> dict[str, Any]:
    rd = RunDir(suite.root / run.id)
    rd.path.mkdir(parents=True, exist_ok=True)
    config_path = suite.root / "configs" / f"{run.id}.yaml"
    write_text(config_path, run.config.to_yaml())
    resume = rd.has_checkpoints()
    cmd = [sys.executable, "-m", "dtr_plugins", "train", str(config_path), "--run-dir", str(rd.path)]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    elif threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))  # CPU runs side by side share the cores
    rd.write_status({"state": "running", "resumed": resume})
    started = time.time()
    with open(rd.log_path, "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
        log.write(proc.stderr)
    seconds = round(time.time() - started, 1)
    if proc.returncode == 0:
        status = {"state": "done", "seconds": seconds, "resumed": resume}
    else:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and "warning" not in ln.lower()]
        status = {"state": "failed", "seconds": seconds, "returncode": proc.returncode,
                  "error": lines[-1] if lines else f"exit status {proc.returncode}"}
    rd.write_status(status)
    return status


def run_suite(path: str | Path, *, dry_run: bool = False, only: str | None = None, parallel: int = 1,
              report: bool = True, registry=None) -> Path:
    """Run every planned run that is not finished yet, then build the report; returns the suite folder."""
    suite = load_suite(path, registry=registry)
    runs = [r for r in suite.runs if only is None or fnmatch.fnmatch(r.id, only)]
    if only is not None and not runs:
        raise UserError(f"--only {only!r} matches none of: {', '.join(r.id for r in suite.runs)}")
    if dry_run:
        for r in runs:
            print(f"{run_state(suite.root / r.id, r.config):8s} {r.id}")
        return suite.root
    suite.root.mkdir(parents=True, exist_ok=True)
    write_json(suite.root / "suite.json", {"name": suite.name, "file": str(suite.path),
                                           "runs": [{"id": r.id, "group": r.group, "assignment": r.assignment}
                                                    for r in suite.runs]})
    todo = [r for r in runs if run_state(suite.root / r.id, r.config) != "done"]
    for r in runs:
        if r not in todo:
            print(f"skip     {r.id} (finished)")
    gpus = _gpu_count()
    width = max(1, parallel)

    def work(item: tuple[int, PlannedRun]) -> tuple[PlannedRun, dict[str, Any]]:
        i, run = item
        gpu = (i % gpus) if gpus and width > 1 else None
        threads = max(1, (os.cpu_count() or 1) // width) if not gpus and width > 1 else None
        print(f"start    {run.id}", flush=True)
        status = _launch(run, suite, gpu, threads)
        tail = f" ({status['error']})" if status["state"] == "failed" else f" in {status['seconds']}s"
        print(f"{status['state']:8s} {run.id}{tail}", flush=True)
        return run, status

    with ThreadPoolExecutor(max_workers=width) as pool:
        results = list(pool.map(work, enumerate(todo)))
    failed = [r.id for r, s in results if s["state"] == "failed"]
    if report:
        from .report import build_report

        out = build_report(suite.root)
        print(f"report: {out}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their train.log; rerun the suite to retry)")
    return suite.root


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch is a dependency; be safe in odd environments
        return 0
