"""The training data order: which items a step reads and with which random draws, fixed by ``(seed, step)``.

:class:`StepBatches` gives the batch of step ``s`` as positions ``[s*B, (s+1)*B)`` of a stream of seeded epoch
permutations (each rank its contiguous share), so the data position is the step itself and a resume at step
``s`` reads what an uninterrupted run reads; :class:`SeededItems` reads each item with the torch RNG seeded
from :func:`draw_key` ``(seed, step, slot)``, so augmentation does not depend on workers or on a resume.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.seeds import derived

__all__ = ["draw_key", "SeededItems", "StepBatches"]


def draw_key(seed: int, step: int, slot: int) -> int:
    """Seed of the random draws (augmentation) for the sample at ``slot`` of the global batch of ``step``."""
    return derived(seed * 6_364_136_223_846_793_005 + step * 1_442_695_040_888_963_407 + slot * 2_654_435_761 + 1)


class SeededItems(Dataset):
    """Reads ``dataset[index]`` for an item ``(index, key)`` with the torch RNG seeded from ``key`` (and restored
    afterwards), so a dataset's torch random draws depend on ``(seed, step, slot)`` only: not on the worker, the
    number of workers, or what ran before a resume."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, key = item
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only (what fork_rng restores): torch.manual_seed would also queue a CUDA seed,
            # capturing a Python stack each time on a machine whose CUDA is not initialised (once per item)
            torch.random.default_generator.manual_seed(key)
            return self.dataset[index]


class StepBatches:
    """Batch indices for step ``s``: positions ``[s*B, (s+1)*B)`` of a stream of seeded epoch permutations.

    Each rank takes its contiguous share of the global batch, so the data position is the step itself.
    With ``draw_keys`` it yields ``(index, draw_key(seed, step, slot))`` pairs for :class:`SeededItems`.
    """

    def __init__(self, dataset_len: int, global_batch: int, rank: int, world: int, seed: int, start_step: int,
                 steps: int, draw_keys: bool = False):
        if global_batch % world:
            raise ConfigError(f"train.batch_size: {global_batch} is not divisible by the world size {world}")
        self.n, self.batch, self.rank, self.world = dataset_len, global_batch, rank, world
        self.seed, self.start, self.steps, self.draw_keys = seed, start_step, steps, draw_keys
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(derived(self.seed * 100003 + epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=gen)}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        local = self.batch // self.world
        first = step * self.batch + self.rank * local
        out = []
        for pos in range(first, first + local):
            epoch, i = divmod(pos, self.n)
            out.append(int(self._perm(epoch)[i]))
        return out

    def items(self, step: int) -> list[tuple[int, int]]:
        """``(index, draw key)`` of this rank's share of the batch of ``step``."""
        first = self.rank * (self.batch // self.world)
        return [(index, draw_key(self.seed, step, first + j)) for j, index in enumerate(self.indices(step))]

    def __iter__(self) -> Iterator[list[Any]]:
        for step in range(self.start, self.steps):
            yield self.items(step) if self.draw_keys else self.indices(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def _collate(batch):
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    return images, labels
