"""``vanilla``: every task uses every channel (the plain, unrouted model)."""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from dtr_plugins.core.hookspecs import hookimpl


class VanillaParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Vanilla:
    """All channels active for all tasks; the routing plan then runs the plain blocks, with no mask ops."""

    def mask_table(self, num_tasks: int, channels: int, *, layer: int = 0, num_layers: int = 1) -> torch.Tensor:
        return torch.ones(num_tasks, channels, dtype=torch.bool)

    def __repr__(self) -> str:
        return "vanilla"


@hookimpl
def dtr_register_strategies(register):
    register("vanilla", Vanilla, params=VanillaParams, description="every channel for every timestep (no routing)")
