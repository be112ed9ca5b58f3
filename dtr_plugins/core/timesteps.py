"""Timestep samplers: how the training loop draws each step's times ``t``, one small object per rule.

The contract is :class:`~dtr_plugins.core.contracts.TimestepSampler`: ``continuous`` (float times in
[0, 1] or int64 indices in ``0..T-1``) and ``sample(n, device) -> t`` ``[n]``. Every sampler draws from the
global torch generator of ``device``, so a checkpoint's RNG state restores the stream.

Which sampler a run uses (:func:`training_sampler`): the one the loss weighting declares it needs
(``ant_uw``: :class:`ClusterBalancedTimesteps`), else the process's own (``gaussian``:
:class:`UniformTimesteps`; ``flow_matching``: :class:`UniformTimes` or :class:`LogitNormalTimes`). The
training loop then hands the same ``t`` to the process (``training_losses``) and to the weighting, which
only weighs (docs/architecture.md, "Plugin kinds"). A new sampler is one class with these two members.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dtr_plugins.core.contracts import TimestepSampler
from dtr_plugins.core.errors import ConfigError


class UniformTimesteps:
    """Integer timesteps uniform over ``0..num_timesteps-1`` (int64 ``[n]``; guided-diffusion's
    ``UniformSampler`` without its weights)."""

    continuous = False

    def __init__(self, num_timesteps: int):
        self.num_timesteps = int(num_timesteps)

    def __repr__(self) -> str:
        return f"uniform(T={self.num_timesteps})"

    def sample(self, n: int, device: Any = None) -> Tensor:
        return torch.randint(0, self.num_timesteps, (n,), device=device)


class UniformTimes:
    """Continuous times ``t ~ U(0, 1)`` (float32 ``[n]``)."""

    continuous = True

    def __repr__(self) -> str:
        return "uniform(continuous)"

    def sample(self, n: int, device: Any = None) -> Tensor:
        return torch.rand((n,), device=device)


class LogitNormalTimes:
    """Continuous times ``t = 1 - sigmoid(mean + std * z)``, ``z ~ N(0, 1)`` (float32 ``[n]``): the
    noise level ``u = 1 - t`` is logit-normal (Esser et al., 2024, SD3); ``mean > 0`` favours noisy times."""

    continuous = True

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = float(mean), float(std)

    def __repr__(self) -> str:
        return f"logit_normal(mean={self.mean:g}, std={self.std:g})"

    def sample(self, n: int, device: Any = None) -> Tensor:
        u = torch.sigmoid(self.mean + self.std * torch.randn((n,), device=device))
        return 1 - u


def cluster_edges(num_timesteps: int, k: int) -> list[int]:
    """Boundaries of ``k`` contiguous near-equal timestep intervals: cluster i is ``[e[i], e[i+1])``."""
    return [(i * num_timesteps) // k for i in range(k + 1)]


class ClusterBalancedTimesteps:
    """Integer timesteps balanced over ``k`` clusters (ANT, Go et al., 2023): the batch is split into ``k``
    consecutive chunks, chunk ``i`` drawing uniformly from cluster ``i`` of :func:`cluster_edges`. If ``k``
    does not divide the batch, the first ``n % k`` chunks get one sample more.

    Raises :class:`ConfigError` when ``num_timesteps < k`` (at construction) or a batch holds fewer than
    ``k`` samples (at :meth:`sample`).
    """

    continuous = False

    def __init__(self, num_timesteps: int, k: int, who: str = "ant_uw"):
        self.num_timesteps, self.k, self.who = int(num_timesteps), int(k), who
        if self.num_timesteps < self.k:
            raise ConfigError(f"{who}: k={self.k} clusters need at least {self.k} timesteps "
                              f"(got {self.num_timesteps})")

    def __repr__(self) -> str:
        return f"cluster_balanced(T={self.num_timesteps}, k={self.k})"

    def sample(self, n: int, device: Any = None) -> Tensor:
        k = self.k
        if n < k:
            raise ConfigError(f"{self.who}: batch of {n} per step cannot cover k={k} timestep clusters; "
                              f"use a batch of at least {k} (a multiple of {k} keeps clusters equal)")
        edges = torch.tensor(cluster_edges(self.num_timesteps, k), device=device)
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        cluster = torch.repeat_interleave(torch.arange(k, device=device), torch.tensor(sizes, device=device))
        low, width = edges[cluster], (edges[1:] - edges[:-1])[cluster]
        # one uniform draw per sample from the global generator, floored into its cluster
        u = torch.rand(n, device=device)
        return low + torch.minimum((u * width).long(), width - 1)


def training_sampler(process: Any, weighting: Any, weighting_name: str = "") -> TimestepSampler:
    """The sampler of a run: ``weighting.timestep_sampler(T)`` when the weighting needs one, else
    ``process.timestep_sampler()``. Raises :class:`ConfigError` (``loss_weighting.name: ...``) when the
    weighting's sampler draws integer timesteps for a process with continuous times, or the reverse."""
    own: TimestepSampler = process.timestep_sampler()
    needed: TimestepSampler | None = weighting.timestep_sampler(process.num_timesteps)
    if needed is None:
        return own
    if bool(needed.continuous) != bool(own.continuous):
        kind = "continuous times" if needed.continuous else "integer timesteps"
        raise ConfigError(f"loss_weighting.name: {weighting_name or type(weighting).__name__!r} draws {kind} "
                          f"({needed!r}); the process draws {own!r}")
    return needed


__all__ = ["ClusterBalancedTimesteps", "LogitNormalTimes", "UniformTimes", "UniformTimesteps", "cluster_edges",
           "training_sampler"]
