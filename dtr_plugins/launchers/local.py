"""The ``local`` launcher: a pool of training subprocesses on this machine, one GPU each (the default)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.config import read_yaml
from dtr_plugins.core.errors import UserError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.log import CAPTURED_ENV
from dtr_plugins.launchers import RunSpec
from dtr_plugins.runs.rundir import RunDir

logger = logging.getLogger(__name__)


class LocalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parallel: int = Field(1, ge=1, description="runs at a time (one GPU each when there are GPUs; without GPUs "
                          "each run gets cpu_count // parallel threads)")
    progress_every: float = Field(30.0, gt=0, description="seconds between the progress lines of a running run")


def has_checkpoint(run_dir: Path) -> bool:
    return RunDir(run_dir).has_checkpoints()


def failure_line(output: str, returncode: int) -> str:
    """The error of a failed run from its output: its ``dtr: error:`` line, else the last line that is
    not a warning. The error may follow a progress bar on the same line (a bar draws no newline)."""
    marker = "dtr: error:"
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if marker in ln]
    if errors:
        return errors[-1].rsplit(marker, 1)[1].strip()
    lines = [ln for ln in lines if "warning" not in ln.lower()]
    return lines[-1] if lines else f"exit status {returncode}"


def _total_steps(config_path: Path) -> int | None:
    try:
        steps = (read_yaml(config_path).get("train") or {}).get("steps")
    except (UserError, AttributeError):
        return None
    return steps if isinstance(steps, int) else None


class LocalLauncher:
    """Runs each training as ``python -m dtr_plugins train CFG --run-dir DIR [--resume]`` and waits for it."""

    blocking = True

    def __init__(self, parallel: int = 1, progress_every: float = 30.0) -> None:
        self.parallel = parallel
        self.progress_every = progress_every

    def launch(self, suite_root: Path, runs: Sequence[RunSpec]) -> dict[str, dict[str, Any]]:
        gpus = _gpu_count()
        width = self.parallel

        def work(item: tuple[int, RunSpec]) -> tuple[str, dict[str, Any]]:
            i, run = item
            gpu = (i % gpus) if gpus and width > 1 else None
            threads = max(1, (os.cpu_count() or 1) // width) if not gpus and width > 1 else None
            status = run_training(run, gpu, threads, self.progress_every)
            tail = f" ({status['error']})" if status["state"] == "failed" else f" in {status['seconds']}s"
            logger.info(f"{status['state']:8s} {run.id}{tail}")
            return run.id, status

        with ThreadPoolExecutor(max_workers=width) as pool:
            return dict(pool.map(work, enumerate(runs)))

    def active(self, suite_root: Path, runs: Sequence[RunSpec]) -> dict[str, str]:
        return {}  # a local run lives only while its `dtr suite` waits for it

    def wait(self, suite_root: Path, runs: Sequence[RunSpec], timeout_s: float | None = None) -> None:
        return None

    def cancel(self, suite_root: Path, runs: Sequence[RunSpec]) -> list[str]:
        return []


def run_training(run: RunSpec, gpu: int | None, threads: int | None = None,
                 progress_every: float = 30.0) -> dict[str, Any]:
    """Train one run in a subprocess, writing ``status.json`` before and after; returns the final status.

    The child's stdout and stderr stream into ``train.log`` line by line as it runs (its path is printed
    at the start); every ``progress_every`` seconds one line gives the run's step (from metrics.jsonl)
    out of ``train.steps``. ``threads``: the child's CPU threads (``--threads``, OMP_NUM_THREADS).
    """
    run.run_dir.mkdir(parents=True, exist_ok=True)
    resume = has_checkpoint(run.run_dir)
    cmd = [sys.executable, "-m", "dtr_plugins", "train", str(run.config_path), "--run-dir", str(run.run_dir)]
    if resume:
        cmd.append("--resume")
    rd = RunDir(run.run_dir)
    # the child's output goes into train.log below: it writes no train.log of its own (one copy of each line)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{CAPTURED_ENV: str(rd.log_path)})
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    elif threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # CPU runs side by side share the cores
        cmd += ["--threads", str(threads)]
    rd.write_status({"state": "running", "launcher": "local", "resumed": resume, "threads": threads})
    logger.info(f"start    {run.id} (log: {rd.log_path})")
    total = _total_steps(run.config_path)
    started = time.time()
    with open(rd.log_path, "ab") as log:
        log_start = log.tell()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                proc.wait(timeout=progress_every)
                break
            except subprocess.TimeoutExpired:
                logger.info(progress_line(run.id, rd, total, log_start, time.time() - started))
    seconds = round(time.time() - started, 1)
    if proc.returncode == 0:
        status = {"state": "done", "seconds": seconds, "resumed": resume, "threads": threads}
    else:
        with open(rd.log_path, "rb") as f:
            f.seek(max(log_start, f.seek(0, os.SEEK_END) - 65536))
            output = f.read().decode(errors="replace")
        status = {"state": "failed", "seconds": seconds, "returncode": proc.returncode,
                  "error": failure_line(output, proc.returncode), "threads": threads}
    rd.write_status(status)
    return status


def progress_line(run_id: str, rd: RunDir, total: int | None, log_start: int, seconds: float) -> str:
    """``running  ID: step N/M[, what its evaluation is doing] (Ts, log: PATH)``: N is the newest step the run has
    recorded (:meth:`RunDir.last_step`, read afresh for each line)."""
    step = rd.last_step()
    doing = _evaluation_note(rd.log_path, log_start)
    return (f"running  {run_id}: step {step or 0}/{total if total is not None else '?'}"
            f"{f', {doing}' if doing else ''} ({seconds:.0f}s, log: {rd.log_path})")


def _evaluation_note(log_path: Path, start: int) -> str:
    """What a run's evaluation is doing, from the last ``dtr: step N: evaluating|scoring ...`` line it logged
    (``evaluating: sampling 200 images ...``); "" when its last such line is a result or there is none."""
    try:
        with open(log_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(start, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = (ln.strip() for ln in text.replace("\r", "\n").splitlines())
    notes = [ln for ln in lines if ln.startswith("dtr: step ")]
    if not notes:
        return ""
    what = notes[-1].split(": ", 2)[-1]
    return what if what.startswith(("evaluating", "scoring")) else ""


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001  # pragma: no cover - torch is a dependency; be safe in odd environments
        return 0


@hookimpl
def dtr_register_launchers(register):
    register("local", LocalLauncher, params=LocalParams,
             description="a pool of training subprocesses on this machine, one GPU each (the default)")
