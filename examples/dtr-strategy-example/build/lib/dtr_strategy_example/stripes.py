"""``stripes``: task ``t`` activates every ``period``-th channel, shifted by ``t``.

A deliberately simple strategy that shows the whole plugin contract: a pydantic params model, a
class with ``mask_table``, and one registration hook.
"""
import torch
from pydantic import BaseModel, ConfigDict, Field

import dtr_plugins


class StripesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period: int = Field(2, ge=1, description="one channel in `period` is active per task")


class Stripes:
    def __init__(self, period: int = 2):
        self.period = period

    def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
        t = torch.arange(num_tasks)[:, None]
        return (torch.arange(channels)[None, :] + t) % self.period == 0

    def __repr__(self):
        return f"stripes(period={self.period})"


@dtr_plugins.hookimpl
def dtr_register_strategies(register):
    register("stripes", Stripes, params=StripesParams, description="every period-th channel, shifted per timestep")
