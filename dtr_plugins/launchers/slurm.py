"""The ``slurm`` launcher: each run of a suite is one Slurm job (one job array per submission), via submitit.

Each job starts ``torchrun`` over ``gpus_per_run`` GPUs on ``nodes_per_run`` nodes (see :mod:`.job`).
Submitted job ids are kept in ``<suite>/slurm/jobs.json`` and submitit's scripts and logs in
``<suite>/slurm/``, so a rerun of ``dtr suite`` asks ``squeue`` which runs still have a live job and
submits only the runs that are neither finished nor queued. Needs ``pip install dtr-plugins[slurm]``.

``setup`` lines are shell by design: they are written as given at the top of every job script (``dtr suite
--dry-run`` prints them). No other option becomes shell: control characters in any option are refused
(:func:`dtr_plugins.launchers.resolve_launcher`) and ``python`` is quoted; see docs/security.md.
"""
from __future__ import annotations

import getpass
import json
import logging
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dtr_plugins.core.errors import UserError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.io import write_json
from dtr_plugins.launchers import RunSpec

logger = logging.getLogger(__name__)


class SlurmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    partition: str | None = Field(None, description="partition (sbatch --partition); the cluster default if unset")
    gpus_per_run: int = Field(0, ge=0, description="GPUs of one run over all its nodes (0: one CPU process per node)")
    nodes_per_run: int = Field(1, ge=1, description="nodes of one run; torchrun meets over a c10d rendezvous")
    cpus_per_run: int | None = Field(None, ge=1, description="CPUs per node (sbatch --cpus-per-task)")
    time: int | str = Field(60, description="time limit: minutes, or 'HH:MM:SS' / 'D-HH:MM:SS'")
    account: str | None = None
    qos: str | None = None
    mem_gb: float | None = Field(None, gt=0, description="memory per node in GB")
    max_parallel: int = Field(256, ge=1, description="array tasks running at once (sbatch --array=...%N)")
    signal_delay_s: int = Field(120, ge=10, description="seconds before the time limit when the job is signalled")
    max_requeues: int = Field(3, ge=0, description="requeues after a time-out (preemptions requeue without limit)")
    setup: list[str] = Field(default_factory=list, description="shell lines run as written at the top of each job "
                             "script (module load ...): shell by design, shown by dtr suite --dry-run")
    extra: dict[str, Any] = Field(default_factory=dict, description="any other sbatch option, e.g. {constraint: a100}")
    python: str | None = Field(None, description="python on the nodes (default: the one running dtr suite)")
    poll_s: float = Field(10.0, gt=0, description="seconds between squeue polls while waiting")

    @field_validator("time")
    @classmethod
    def _time(cls, value: int | str) -> int | str:
        minutes(value)
        return value

    @model_validator(mode="after")
    def _gpus_divide(self) -> SlurmParams:
        if self.gpus_per_run and self.gpus_per_run % self.nodes_per_run:
            raise ValueError(f"gpus_per_run {self.gpus_per_run} is not divisible by nodes_per_run {self.nodes_per_run}")
        if minutes(self.time) * 60 <= self.signal_delay_s:  # signalled before it trains, requeued until it fails
            raise ValueError(f"time {self.time!r} ({minutes(self.time) * 60} s) is not longer than signal_delay_s "
                             f"{self.signal_delay_s} s, so each job would be signalled before it trains; raise time "
                             "or lower signal_delay_s")
        return self


def minutes(value: int | str) -> int:
    """Slurm time limit in whole minutes from ``90``, ``"01:30:00"`` or ``"2-00:00:00"`` (raises ValueError)."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError("time must be at least 1 minute")
        return value
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2}):(\d{2})", value.strip())
    if not match:
        raise ValueError(f"time {value!r} is not minutes, 'HH:MM:SS' or 'D-HH:MM:SS'")
    days, hours, mins, secs = (int(g or 0) for g in match.groups())
    if mins > 59 or secs > 59 or (match.group(1) is not None and hours > 23):
        raise ValueError(f"time {value!r}: minutes and seconds must be 00-59 (and hours 00-23 after a day count)")
    return max(1, days * 1440 + hours * 60 + mins + (1 if secs else 0))


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError(f"launcher slurm: `{cmd[0]}` is not on PATH (is this a Slurm login node?)") from None


class SlurmLauncher:
    """Submits runs as a submitit job array and reads their states with ``squeue``."""

    blocking = False

    def __init__(self, **params: Any) -> None:
        self.p = SlurmParams(**params)

    # ---------------------------------------------------------------------------- bookkeeping
    @staticmethod
    def jobs_file(suite_root: Path) -> Path:
        return suite_root / "slurm" / "jobs.json"

    def jobs(self, suite_root: Path) -> dict[str, dict[str, Any]]:
        path = self.jobs_file(suite_root)
        return json.loads(path.read_text()) if path.exists() else {}

    # -------------------------------------------------------------------------------- protocol
    def launch(self, suite_root: Path, runs: Sequence[RunSpec]) -> dict[str, dict[str, Any]]:
        if not runs:
            return {}
        try:
            import submitit
        except ImportError:
            raise UserError("launcher slurm needs submitit: pip install 'dtr-plugins[slurm]'") from None
        from dtr_plugins.launchers.job import TrainJob

        p = self.p
        executor = submitit.SlurmExecutor(folder=suite_root / "slurm" / "%j", max_num_timeout=p.max_requeues,
                                          python=shlex.quote(p.python) if p.python else None)  # a path, not shell
        params: dict[str, Any] = {
            "job_name": f"dtr-{suite_root.name}", "time": minutes(p.time), "nodes": p.nodes_per_run,
            "ntasks_per_node": 1, "signal_delay_s": p.signal_delay_s, "array_parallelism": p.max_parallel,
            "stderr_to_stdout": True}
        if p.partition:
            params["partition"] = p.partition
        if p.gpus_per_run:
            params["gpus_per_node"] = p.gpus_per_run // p.nodes_per_run
        for key, value in (("cpus_per_task", p.cpus_per_run), ("account", p.account), ("qos", p.qos),
                           ("mem", f"{p.mem_gb:g}GB" if p.mem_gb else None)):
            if value is not None:
                params[key] = value
        if p.setup:
            params["setup"] = list(p.setup)
        if p.extra:
            params["additional_parameters"] = dict(p.extra)
        executor.update_parameters(**params)
        nproc = p.gpus_per_run // p.nodes_per_run if p.gpus_per_run else 1
        fns = [TrainJob(run_id=r.id, run_dir=str(r.run_dir.resolve()), config_path=str(r.config_path.resolve()),
                        python=p.python or sys.executable, nproc_per_node=nproc, threads=p.cpus_per_run)
               for r in runs]
        try:
            jobs = executor.submit_array(fns)
        except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as exc:
            raise UserError(f"launcher slurm: sbatch failed: {_last_line(str(exc))}") from None
        known = self.jobs(suite_root)
        out: dict[str, dict[str, Any]] = {}
        for run, job in zip(runs, jobs):
            record = {"job_id": job.job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "log": str(suite_root / "slurm" / job.job_id / f"{job.job_id}_0_log.out")}
            known[run.id] = out[run.id] = record
            run.run_dir.mkdir(parents=True, exist_ok=True)
            logger.info(f"submit   {run.id} (slurm job {job.job_id})")
        write_json(self.jobs_file(suite_root), known)
        return out

    def _queue(self) -> dict[str, str]:
        """Job id -> state of this user's live jobs (array tasks one by one)."""
        proc = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
        if proc.returncode != 0:
            raise UserError(f"launcher slurm: squeue failed: {_last_line(proc.stderr)}")
        return dict(line.split("|", 1) for line in proc.stdout.split() if "|" in line)

    def active(self, suite_root: Path, runs: Sequence[RunSpec]) -> dict[str, str]:
        jobs = self.jobs(suite_root)
        if not any(r.id in jobs for r in runs):
            return {}
        queue = self._queue()
        out = {}
        for run in runs:
            job_id = jobs.get(run.id, {}).get("job_id")
            if job_id in queue:
                out[run.id] = f"slurm job {job_id} {queue[job_id]}"
        return out

    def last_state(self, job_id: str) -> str:
        """The job's final state while Slurm still remembers it (``scontrol``), else ``gone``."""
        proc = _run(["scontrol", "show", "job", "-o", job_id])
        match = re.search(r"JobState=(\S+)", proc.stdout)
        return match.group(1) if proc.returncode == 0 and match else "gone"

    def wait(self, suite_root: Path, runs: Sequence[RunSpec], timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.active(suite_root, runs):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"slurm jobs of {suite_root} still running after {timeout_s}s")
            time.sleep(self.p.poll_s)

    def cancel(self, suite_root: Path, runs: Sequence[RunSpec]) -> list[str]:
        live = self.active(suite_root, runs)
        if not live:
            return []
        jobs = self.jobs(suite_root)
        proc = _run(["scancel", *(jobs[r]["job_id"] for r in live)])
        if proc.returncode != 0:
            raise UserError(f"launcher slurm: scancel failed: {_last_line(proc.stderr)}")
        return sorted(live)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def build_slurm_launcher(**params: Any) -> SlurmLauncher:
    return SlurmLauncher(**params)


@hookimpl
def dtr_register_launchers(register):
    register("slurm", build_slurm_launcher, params=SlurmParams,
             description="each run one Slurm job (a job array per suite) running torchrun; requeued runs resume")
