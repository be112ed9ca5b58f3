"""``constant``: every timestep weighs the same (the plain DDPM / DiT objective)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.weighting.base import LossWeighting


class ConstantParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Constant(LossWeighting):
    """Uniform timesteps, loss = mean of the per-sample ``mse + vb``."""

    def extra_repr(self) -> str:
        return "constant"


@hookimpl
def dtr_register_loss_weightings(register):
    register("constant", Constant, params=ConstantParams,
             description="uniform weights: the mean of the per-sample loss (DDPM / DiT default)")
