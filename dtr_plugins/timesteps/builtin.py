"""The built-in ``timestep_sampler`` rules: ``uniform``, ``logit_normal``, ``cluster_balanced``, ``speed``.

A config picks one with ``timesteps: {name: ..., **params}``; without that section the loss weighting's
sampler (``ant_uw``: cluster-balanced) or the process's own is used (:func:`dtr_plugins.core.timesteps.choose_sampler`).
Each rule gives a :class:`~dtr_plugins.core.contracts.TimestepSampler` for the process's kind of time: integer
indices ``0..T-1`` (``gaussian``) or continuous ``t`` in ``[0, 1]`` (``flow_matching``); the samplers themselves
live in :mod:`dtr_plugins.core.timesteps`.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.contracts import SupportsNoiseSchedule, TimestepSampler
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.timesteps import (
    ClusterBalancedTimes,
    ClusterBalancedTimesteps,
    LogitNormalTimes,
    LogitNormalTimesteps,
    SpeedTimesteps,
    UniformTimes,
    UniformTimesteps,
    speed_distribution,
)


class UniformParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogitNormalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    mean: float = Field(0.0, description="location of the logit of the noise level (> 0 favours noisy times)")
    std: float = Field(1.0, gt=0, description="scale of the logit of the noise level")


class ClusterBalancedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(8, ge=1, description="equal intervals of time, each drawn by an equal share of the batch")


class Uniform:
    """Uniform times: integer indices ``U{0..T-1}`` or continuous ``U(0, 1)``."""

    def __repr__(self) -> str:
        return "uniform"

    def sampler(self, process: Any, *, continuous: bool) -> TimestepSampler:
        return UniformTimes() if continuous else UniformTimesteps(process.num_timesteps)


class LogitNormal:
    """Logit-normal noise levels (Esser et al., 2024): continuous ``t = 1 - sigmoid(mean + std z)``, or the
    integer index ``floor(T sigmoid(mean + std z))``."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = float(mean), float(std)

    def __repr__(self) -> str:
        return f"logit_normal(mean={self.mean:g}, std={self.std:g})"

    def sampler(self, process: Any, *, continuous: bool) -> TimestepSampler:
        if continuous:
            return LogitNormalTimes(self.mean, self.std)
        return LogitNormalTimesteps(process.num_timesteps, self.mean, self.std)


class ClusterBalanced:
    """ANT's cluster-balanced draw (Go et al., 2023): the batch in ``k`` equal chunks, chunk ``i`` uniform in
    interval ``i`` of ``k`` contiguous ones (integer clusters of ``0..T-1``, or ``[i/k, (i+1)/k)``)."""

    def __init__(self, k: int = 8):
        self.k = int(k)

    def __repr__(self) -> str:
        return f"cluster_balanced(k={self.k})"

    def sampler(self, process: Any, *, continuous: bool) -> TimestepSampler:
        if continuous:
            return ClusterBalancedTimes(self.k, who="timesteps.k")
        num_timesteps = int(process.num_timesteps)
        if num_timesteps < self.k:
            raise ConfigError(f"timesteps.k: {self.k} clusters need at least {self.k} timesteps (the process has "
                              f"{num_timesteps})")
        return ClusterBalancedTimesteps(num_timesteps, self.k, who="timesteps.k")


class SpeedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    threshold: float = Field(1e-4, gt=0, description="slope of sqrt(1 - abar_t) below which timesteps count as "
                             "converged (drawn 5 times less often)")


class Speed:
    """SpeeD's asymmetric sampling (Wang et al., 2024): the converged, nearly pure-noise tail of the schedule
    drawn less often, each draw paired with its mirror about the tail's start. Integer timesteps of a process
    with a noise schedule (:class:`~dtr_plugins.core.contracts.SupportsNoiseSchedule`) only. SpeeD's loss
    weighting is ``p2`` with ``gamma: 1, k: 1``, a ``loss_weighting`` of its own."""

    def __init__(self, threshold: float = 1e-4):
        self.threshold = float(threshold)

    def __repr__(self) -> str:
        return f"speed(threshold={self.threshold:g})"

    def sampler(self, process: Any, *, continuous: bool) -> TimestepSampler:
        if continuous or not isinstance(process, SupportsNoiseSchedule):
            raise ConfigError("timesteps.name: 'speed' draws integer timesteps from a discrete noise schedule "
                              "(diffusion: gaussian); this process has continuous times or no alphas_cumprod")
        probs, meaningful = speed_distribution(process.alphas_cumprod, self.threshold)
        return SpeedTimesteps(probs, meaningful)


@hookimpl
def dtr_register_timestep_samplers(register):
    register("uniform", Uniform, params=UniformParams, description="uniform times, integer or continuous")
    register("logit_normal", LogitNormal, params=LogitNormalParams,
             description="logit-normal noise levels (SD3), integer or continuous")
    register("cluster_balanced", ClusterBalanced, params=ClusterBalancedParams,
             description="the batch split evenly over k time intervals (ANT)")
    register("speed", Speed, params=SpeedParams,
             description="SpeeD: the converged noise tail drawn less, draws paired (integer timesteps)")
