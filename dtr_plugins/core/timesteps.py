"""Timestep samplers: how the training loop draws each step's times ``t``, one small object per rule.

The contract is :class:`~dtr_plugins.core.contracts.TimestepSampler`: ``continuous`` (float times in
[0, 1] or int64 indices in ``0..T-1``) and ``sample(n, device) -> t`` ``[n]``. Every sampler draws from the
global torch generator of ``device``, so a checkpoint's RNG state restores the stream.

Which sampler a run uses (:func:`choose_sampler`): the config's ``timesteps: {name, **params}`` section (a
:class:`~dtr_plugins.core.contracts.TimestepRule` of the ``timestep_sampler`` plugin kind, built for the
process's kind of time), else the one the loss weighting declares it needs (``ant_uw``:
:class:`ClusterBalancedTimesteps`), else the process's own (``gaussian``: :class:`UniformTimesteps`;
``flow_matching``: :class:`UniformTimes` or :class:`LogitNormalTimes`). The training loop then hands the same
``t`` to the process (``training_losses``) and to the weighting, which only weighs (docs/architecture.md,
"Plugin kinds"). A new sampler is one class with these two members.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dtr_plugins.core.contracts import TimestepRule, TimestepSampler
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


class LogitNormalTimesteps:
    """Integer timesteps whose noise level ``u = (index + U(0, 1)) / T`` is close to logit-normal: ``index =
    floor(T * sigmoid(mean + std * z))`` clipped to ``T - 1`` (int64 ``[n]``; index ``T - 1`` is the noisiest),
    the discrete counterpart of :class:`LogitNormalTimes` (Esser et al., 2024)."""

    continuous = False

    def __init__(self, num_timesteps: int, mean: float = 0.0, std: float = 1.0):
        self.num_timesteps, self.mean, self.std = int(num_timesteps), float(mean), float(std)

    def __repr__(self) -> str:
        return f"logit_normal(T={self.num_timesteps}, mean={self.mean:g}, std={self.std:g})"

    def sample(self, n: int, device: Any = None) -> Tensor:
        u = torch.sigmoid(self.mean + self.std * torch.randn((n,), device=device))
        return (u * self.num_timesteps).long().clamp_(0, self.num_timesteps - 1)


class ClusterBalancedTimes:
    """Continuous times balanced over ``k`` equal intervals of ``[0, 1]``: the batch is split into ``k``
    consecutive chunks as in :class:`ClusterBalancedTimesteps`, chunk ``i`` drawing ``t ~ U(i/k, (i+1)/k)``
    (float32 ``[n]``). Raises :class:`ConfigError` when a batch holds fewer than ``k`` samples."""

    continuous = True

    def __init__(self, k: int, who: str = "timesteps"):
        self.k, self.who = int(k), who

    def __repr__(self) -> str:
        return f"cluster_balanced(continuous, k={self.k})"

    def sample(self, n: int, device: Any = None) -> Tensor:
        k = self.k
        if n < k:
            raise ConfigError(f"{self.who}: batch of {n} per step cannot cover k={k} time intervals; use a batch "
                              f"of at least {k}")
        return (balanced_clusters(n, k, device) + torch.rand(n, device=device)) / k


class SpeedTimesteps:
    """SpeeD's asymmetric draw of integer timesteps (Wang et al., 2024, "A Closer Look at Time Steps is Worthy
    of Triple Speed-Up for Diffusion Model Training"; official code 1zeryu/SpeeD, ``speed/diffusion/iddpm/speed.py``).

    ``probs`` ``[T]`` (float64, sums to 1) and ``meaningful_steps`` ``m`` come from :func:`speed_distribution`. A
    batch of ``n``: ``n // 2 + 1`` indices ``t`` drawn with replacement from ``probs`` (``torch.multinomial``, the
    CPU generator), each followed in the batch by its partner ``m - t`` (for ``t < m``) or ``t - m`` (else),
    clipped to ``T - 1``; the first ``n`` of ``[t, partner]`` (int64 ``[n]``, moved to ``device``)."""

    continuous = False

    def __init__(self, probs: Tensor, meaningful_steps: int):
        self.probs, self.meaningful_steps = probs, int(meaningful_steps)
        self.num_timesteps = int(probs.shape[0])

    def __repr__(self) -> str:
        return f"speed(T={self.num_timesteps}, meaningful_steps={self.meaningful_steps})"

    def sample(self, n: int, device: Any = None) -> Tensor:
        t = torch.multinomial(self.probs, n // 2 + 1, replacement=True)
        m = self.meaningful_steps
        partner = torch.where(t < m, m - t, t - m).clamp_(max=self.num_timesteps - 1)
        return torch.cat([t, partner])[:n].to(device)


def speed_distribution(alphas_cumprod: Any, threshold: float = 1e-4) -> tuple[Tensor, int]:
    """SpeeD's sampling weights and its ``meaningful_steps`` from a schedule's ``abar_t`` (float64 ``[T]``).

    With ``g`` the finite-difference slope (central, one-sided at the ends) of ``sqrt(1 - abar_t)`` over ``t``:
    timesteps where ``g < threshold`` are the converged, nearly pure-noise tail; ``meaningful_steps`` is the
    first such index plus one (1 when there is none), and the weight of ``t`` is ``tanh(1e6 (g_t - threshold))
    + 1.5`` (about 2.5 before the tail, 0.5 in it: the tail drawn 5 times less often), normalised to sum 1."""
    import numpy as np

    slope = np.gradient(np.sqrt(1.0 - np.asarray(alphas_cumprod, dtype=np.float64)))
    meaningful = int(np.argmax(slope < threshold)) + 1
    weights = np.tanh(1e6 * (slope - threshold)) + 1.5
    return torch.from_numpy(weights / np.abs(weights).sum()), meaningful


def balanced_clusters(n: int, k: int, device: Any = None) -> Tensor:
    """The cluster of each of ``n`` samples, ``long [n]``: ``k`` clusters in order, sizes ``n // k`` plus one for
    the first ``n % k`` (ANT's equal share of a batch per cluster), for the discrete and continuous samplers."""
    sizes = torch.tensor([n // k + (1 if i < n % k else 0) for i in range(k)], device=device)
    return torch.repeat_interleave(torch.arange(k, device=device), sizes)


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
        cluster = balanced_clusters(n, k, device)
        low, width = edges[cluster], (edges[1:] - edges[:-1])[cluster]
        # one uniform draw per sample from the global generator, floored into its cluster
        u = torch.rand(n, device=device)
        return low + torch.minimum((u * width).long(), width - 1)


def choose_sampler(process: Any, weighting: Any, weighting_name: str = "", rule: TimestepRule | None = None,
                   rule_name: str = "") -> tuple[TimestepSampler, str]:
    """The sampler of a run and where it came from (``"timesteps"``, ``"loss_weighting"`` or ``"process"``):
    ``rule.sampler(T, continuous=...)`` when the config names a ``timesteps`` rule, else
    ``weighting.timestep_sampler(T)`` when the weighting needs one, else ``process.timestep_sampler()``; the
    process's own sampler says whether its times are continuous. Raises :class:`ConfigError` (one line naming
    ``timesteps.name`` or ``loss_weighting.name``) when the chosen sampler draws integer timesteps for a
    process with continuous times, or the reverse."""
    own: TimestepSampler = process.timestep_sampler()
    if rule is not None:
        chosen = rule.sampler(process, continuous=bool(own.continuous))
        _same_kind(chosen, own, f"timesteps.name: {rule_name or repr(rule)!r}")
        return chosen, "timesteps"
    needed: TimestepSampler | None = weighting.timestep_sampler(process.num_timesteps)
    if needed is None:
        return own, "process"
    _same_kind(needed, own, f"loss_weighting.name: {weighting_name or type(weighting).__name__!r}")
    return needed, "loss_weighting"


def _same_kind(chosen: TimestepSampler, own: TimestepSampler, who: str) -> None:
    if bool(chosen.continuous) != bool(own.continuous):
        kind = "continuous times" if chosen.continuous else "integer timesteps"
        raise ConfigError(f"{who} draws {kind} ({chosen!r}); the process draws {own!r}")


def training_sampler(process: Any, weighting: Any, weighting_name: str = "", rule: TimestepRule | None = None,
                     rule_name: str = "") -> TimestepSampler:
    """The sampler of :func:`choose_sampler` alone."""
    return choose_sampler(process, weighting, weighting_name, rule, rule_name)[0]


def sampler_record(sampler: TimestepSampler, source: str) -> dict[str, Any]:
    """What ``meta.json`` records as the applied sampler: its ``repr``, kind of time and where it came from."""
    return {"sampler": repr(sampler), "continuous": bool(sampler.continuous), "from": source}


__all__ = ["ClusterBalancedTimes", "ClusterBalancedTimesteps", "LogitNormalTimes", "LogitNormalTimesteps",
           "SpeedTimesteps", "UniformTimes", "UniformTimesteps", "choose_sampler", "cluster_edges", "sampler_record",
           "speed_distribution", "training_sampler"]
