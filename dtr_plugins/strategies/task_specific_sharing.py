"""``task_specific_sharing``: a shared channel block plus one private slice per timestep interval."""
from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params


class SharingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shared_ratio: float = Field(0.5, ge=0, le=1, description="share of channels [0, s) used by every task")
    groups: int = Field(4, ge=1, description="number of timestep intervals, each with its own channel slice")


def _split(length: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous [start, end) slices of near-equal width covering ``range(length)``."""
    bounds = [round(i * length / parts) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class TaskSpecificSharing:
    """Channels ``[0, s)`` are shared; the rest split into ``groups`` slices, one per timestep interval.

    ``shared_ratio = 0`` gives disjoint experts inside one network, ``shared_ratio = 1`` the vanilla model.
    """

    def __init__(self, **params: Any):
        """``shared_ratio``, ``groups``: see the params model (their defaults live there)."""
        p = parse_params(SharingParams, params, "task_specific_sharing")
        self.shared_ratio = p.shared_ratio
        self.groups = p.groups

    def mask_table(self, num_tasks: int, channels: int, *, layer: int = 0, num_layers: int = 1) -> torch.Tensor:
        s = math.floor(self.shared_ratio * channels)
        table = torch.zeros(num_tasks, channels, dtype=torch.bool)
        table[:, :s] = True
        slices = _split(channels - s, self.groups)
        intervals = _split(num_tasks, self.groups)
        for (t0, t1), (c0, c1) in zip(intervals, slices):
            table[t0:t1, s + c0:s + c1] = True
        return table

    def __repr__(self) -> str:
        return f"task_specific_sharing(shared_ratio={self.shared_ratio:g}, groups={self.groups})"


@hookimpl
def dtr_register_strategies(register):
    register("task_specific_sharing", TaskSpecificSharing, params=SharingParams,
             description="shared channels plus a private slice per timestep interval (ANT-style clusters)")
