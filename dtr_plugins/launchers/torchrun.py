"""The ``torchrun`` command line one node of a multi-node job runs (no submitit needed: tests and other
launchers build it too)."""
from __future__ import annotations

import zlib
from pathlib import Path


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
