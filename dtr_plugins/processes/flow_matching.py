"""``flow_matching``: SiT's linear interpolant with velocity prediction, in continuous time."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.flow import FlowMatching
from dtr_plugins.core.hookspecs import hookimpl


class FlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1000, ge=2, description="T: rows of the routing-table grid over u (row round(u * (T-1)))")
    time_sampling: Literal["uniform", "logit_normal"] = Field("uniform", description="training time distribution")
    logit_mean: float = Field(0.0, description="logit-normal mean over the noise level u (> 0: noisier)")
    logit_std: float = Field(1.0, gt=0, description="logit-normal standard deviation")
    routing: Literal["continuous", "grid"] = Field("continuous", description="closed-form masks over u where a "
                                                   "strategy has one (dtr), or always the nearest table row")
    sde_last_step: float = Field(0.04, gt=0, lt=1, description="final mean step of the euler_maruyama sampler")


@hookimpl
def dtr_register_processes(register):
    register("flow_matching", FlowMatching, params=FlowParams,
             description="flow matching (SiT linear interpolant, velocity): Euler, Heun, Euler-Maruyama samplers")
