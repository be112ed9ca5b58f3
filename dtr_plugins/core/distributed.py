"""Process-group helpers: one process or many under ``torchrun`` (NCCL on GPU, gloo on CPU)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dtr_plugins.core.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def all_ok(d: Dist, ok: bool) -> bool:
    """True on every rank when ``ok`` is true on every rank (one all-reduce; a plain ``ok`` in one process).

    Use it where one rank does work alone (rank 0 merging shards) and the others would wait at the next
    barrier: every rank learns of the failure and stops together instead of hanging until the timeout.
    """
    if not d.enabled:
        return ok
    flag = torch.tensor(int(ok), dtype=torch.int32, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def set_threads(threads: int | None, key: str = "--threads") -> None:
    """``torch.set_num_threads(threads)`` (intra-op CPU threads of this process); None leaves torch's default.

    Raises UserError (one line naming ``key``) for a count below 1.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UserError(f"{key}: {threads!r} is not a thread count; give an integer of 1 or more")
        torch.set_num_threads(int(threads))


def setup(device: str = "auto") -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def teardown(d: Dist, *, clean: bool) -> None:
    """Leave the process group (nothing in one process).

    ``clean``: this rank reached its end without an error. It then waits at a barrier first, so that no rank
    closes its connections while another still reads from them (gloo can abort a peer whose socket closes
    mid-exchange, e.g. rank 1 leaving while rank 0 still receives a ``gather``). After an error it leaves at
    once: the other ranks may never reach a barrier (torchrun stops them when this rank exits).
    """
    if d.enabled and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
