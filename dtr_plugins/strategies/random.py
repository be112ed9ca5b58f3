"""``random``: random task routing (R-TR), the paper's ablation baseline."""
from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params
from dtr_plugins.core.seeds import SEED_MAX, derived


class RandomParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = Field(0.8, gt=0, le=1, description="share of channels active per task")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="base seed; layer i draws with seed + i")


class RandomRouting:
    """Each task activates ``floor(beta * C)`` channels drawn without replacement; one table per layer."""

    def __init__(self, **params: Any):
        """``beta``, ``seed``: see :class:`RandomParams` (their defaults live there)."""
        p = parse_params(RandomParams, params, "random")
        self.beta = p.beta
        self.seed = p.seed

    def mask_table(self, num_tasks: int, channels: int, *, layer: int = 0, num_layers: int = 1) -> torch.Tensor:
        n = math.floor(self.beta * channels)
        gen = torch.Generator().manual_seed(derived(self.seed + layer))
        chosen = torch.rand(num_tasks, channels, generator=gen).argsort(dim=1)[:, :n]
        table = torch.zeros(num_tasks, channels, dtype=torch.bool)
        table.scatter_(1, chosen, True)
        return table

    def __repr__(self) -> str:
        return f"random(beta={self.beta:g}, seed={self.seed})"


@hookimpl
def dtr_register_strategies(register):
    register("random", RandomRouting, params=RandomParams,
             description="random routing (R-TR): a seeded random channel subset per timestep and layer")
