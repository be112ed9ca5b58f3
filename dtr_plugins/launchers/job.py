"""What one Slurm job of a suite runs on each of its nodes: ``torchrun`` over the job's GPUs and nodes.

The job is a :class:`submitit.helpers.Checkpointable`, so when Slurm signals a preemption or the end of the
time limit submitit requeues it, and the requeued job starts training again with ``--resume`` from the
run's newest checkpoint. Node 0 writes the run's ``status.json`` and ``train.log``; the other nodes write
``train.node<N>.log``. Everything else in the run directory is written by global rank 0 of the training.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from dtr_plugins.core.log import CAPTURED_ENV
from dtr_plugins.launchers.local import failure_line, has_checkpoint
from dtr_plugins.launchers.torchrun import rendezvous_port, torchrun_command
from dtr_plugins.runs.rundir import RunDir


def _ignore_preemption_signal() -> None:
    # submitit's handler in this process requeues the job; the training must not die of the signal first
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@dataclass
class TrainJob(submitit.helpers.Checkpointable):
    """The callable submitit pickles into the job: trains one run, resuming when it has checkpoints."""

    run_id: str
    run_dir: str
    config_path: str
    python: str
    nproc_per_node: int
    threads: int | None = None

    def __call__(self) -> str:
        env = submitit.JobEnvironment()
        run_dir, node = Path(self.run_dir), env.node
        rd = RunDir(run_dir)
        resume = has_checkpoint(run_dir)
        cmd = torchrun_command(self.python, Path(self.config_path), run_dir, nnodes=env.num_nodes,
                               nproc_per_node=self.nproc_per_node, rdzv_host=env.hostnames[0],
                               rdzv_port=rendezvous_port(env.job_id), rdzv_id=env.job_id, resume=resume)
        child_env = dict(os.environ)
        if self.threads:
            child_env["OMP_NUM_THREADS"] = str(self.threads)
        record = {"launcher": "slurm", "job_id": env.job_id, "nodes": env.num_nodes, "resumed": resume}
        if node == 0:
            rd.write_status({"state": "running", **record})
        started = time.time()
        log_path = rd.log_path if node == 0 else run_dir / f"train.node{node}.log"
        child_env["PYTHONUNBUFFERED"] = "1"  # the log fills as the run goes, not at its end
        child_env[CAPTURED_ENV] = str(log_path)  # captured here: the child writes no train.log of its own
        with open(log_path, "ab") as log:
            log_start = log.tell()
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                  preexec_fn=_ignore_preemption_signal)
        seconds = round(time.time() - started, 1)
        if proc.returncode != 0:
            with open(log_path, "rb") as f:
                f.seek(max(log_start, f.seek(0, os.SEEK_END) - 65536))
                error = failure_line(f.read().decode(errors="replace"), proc.returncode)
            if node == 0:
                rd.write_status({"state": "failed", "seconds": seconds,
                                                     "returncode": proc.returncode, "error": error, **record})
            raise RuntimeError(f"{self.run_id}: training failed: {error}")
        if node == 0:
            rd.write_status({"state": "done", "seconds": seconds, **record})
        return "done"
