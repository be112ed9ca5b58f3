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
import zlib
from dataclasses import dataclass
from pathlib import Path

import submitit

from dtr_plugins.launchers.local import failure_line, has_checkpoint
from dtr_plugins.runs.rundir import RunDir


def torchrun_command(python: str, config_path: Path, run_dir: Path, *, nnodes: int, nproc_per_node: int,
                     rdzv_host: str, rdzv_port: int, rdzv_id: str, resume: bool) -> list[str]:
    """``python -m torch.distributed.run ... -m dtr_plugins train CFG --run-dir DIR [--resume]``.

    One node uses ``--standalone`` (a free local port); several nodes meet through a c10d rendezvous on
    ``rdzv_host:rdzv_port`` (the job's first node), keyed by ``rdzv_id`` (the Slurm job id).
    """
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if nnodes == 1:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        cmd += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_host}:{rdzv_port}",
                f"--rdzv_id={rdzv_id}"]
    cmd += ["-m", "dtr_plugins", "train", str(config_path), "--run-dir", str(run_dir)]
    return cmd + (["--resume"] if resume else [])


def rendezvous_port(job_id: str) -> int:
    """A port in 20000..39999 derived from the job id, so runs sharing a node do not collide."""
    return 20000 + zlib.crc32(job_id.encode()) % 20000


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
