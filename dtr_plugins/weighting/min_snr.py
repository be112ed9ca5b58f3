"""``min_snr``: Min-SNR-gamma weighting (Hang et al., 2023) for epsilon prediction."""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params
from dtr_plugins.weighting.base import MSEWeighting


class MinSNRParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gamma: float = Field(5.0, gt=0, description="SNR cap; weights are min(SNR, gamma) / SNR")


class MinSNR(MSEWeighting):
    """``w_t = min(SNR(t), gamma) / SNR(t)`` on the MSE term: 1 at noisy steps, gamma / SNR at clean ones."""

    def __init__(self, **params: float):
        """``gamma``: see the params model (its default lives there)."""
        super().__init__()
        self.gamma = float(parse_params(MinSNRParams, params, "min_snr").gamma)

    def weight(self, t: Tensor, diffusion) -> Tensor:
        snr = diffusion.snr(t)
        return torch.clamp(snr, max=self.gamma) / snr

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}"


@hookimpl
def dtr_register_loss_weightings(register):
    register("min_snr", MinSNR, params=MinSNRParams,
             description="Min-SNR-gamma: MSE weighted by min(SNR, gamma) / SNR (Hang et al. 2023)")
