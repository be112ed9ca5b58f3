"""The ``local`` launcher: a pool of training subprocesses on this machine, one GPU each (the default)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.hookspecs import hookimpl

from ..rundir import RunDir
from . import RunSpec


class LocalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parallel: int = Field(1, ge=1, description="runs at a time (one GPU each when there are GPUs)")


def has_checkpoint(run_dir: Path) -> bool:
    return RunDir(run_dir).has_checkpoints()


def failure_line(stderr: str, returncode: int) -> str:
    """The last meaningful stderr line of a failed run (warnings skipped)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip() and "warning" not in ln.lower()]
    return lines[-1] if lines else f"exit status {returncode}"


class LocalLauncher:
    """Runs each training as ``python -m dtr_plugins train CFG --run-dir DIR [--resume]`` and waits for it."""

    blocking = True

    def __init__(self, parallel: int = 1) -> None:
        self.parallel = parallel

    def launch(self, suite_root: Path, runs: Sequence[RunSpec]) -> dict[str, dict[str, Any]]:
        gpus = _gpu_count()
        width = self.parallel

        def work(item: tuple[int, RunSpec]) -> tuple[str, dict[str, Any]]:
            i, run = item
            gpu = (i % gpus) if gpus and width > 1 else None
            threads = max(1, (os.cpu_count() or 1) // width) if not gpus and width > 1 else None
            print(f"start    {run.id}", flush=True)
            status = run_training(run, gpu, threads)
            tail = f" ({status['error']})" if status["state"] == "failed" else f" in {status['seconds']}s"
            print(f"{status['state']:8s} {run.id}{tail}", flush=True)
            return run.id, status

        with ThreadPoolExecutor(max_workers=width) as pool:
            return dict(pool.map(work, enumerate(runs)))

    def active(self, suite_root: Path, runs: Sequence[RunSpec]) -> dict[str, str]:
        return {}  # a local run lives only while its `dtr suite` waits for it

    def wait(self, suite_root: Path, runs: Sequence[RunSpec], timeout_s: float | None = None) -> None:
        return None

    def cancel(self, suite_root: Path, runs: Sequence[RunSpec]) -> list[str]:
        return []


def run_training(run: RunSpec, gpu: int | None, threads: int | None = None) -> dict[str, Any]:
    """Train one run in a subprocess, writing ``status.json`` before and after; returns the final status."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    resume = has_checkpoint(run.run_dir)
    cmd = [sys.executable, "-m", "dtr_plugins", "train", str(run.config_path), "--run-dir", str(run.run_dir)]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    elif threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))  # CPU runs side by side share the cores
    rd = RunDir(run.run_dir)
    rd.write_status({"state": "running", "launcher": "local", "resumed": resume})
    started = time.time()
    with open(rd.log_path, "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
        log.write(proc.stderr)
    seconds = round(time.time() - started, 1)
    if proc.returncode == 0:
        status = {"state": "done", "seconds": seconds, "resumed": resume}
    else:
        status = {"state": "failed", "seconds": seconds, "returncode": proc.returncode,
                  "error": failure_line(proc.stderr, proc.returncode)}
    rd.write_status(status)
    return status


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch is a dependency; be safe in odd environments
        return 0


@hookimpl
def dtr_register_launchers(register):
    register("local", LocalLauncher, params=LocalParams,
             description="a pool of training subprocesses on this machine, one GPU each (the default)")
