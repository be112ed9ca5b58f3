"""``p2``: perception-prioritized weighting (Choi et al., 2022)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params
from dtr_plugins.weighting.base import MSEWeighting


class P2Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gamma: float = Field(1.0, ge=0, description="exponent; 0 is the constant weighting, 0.5 and 1 are usual")
    k: float = Field(1.0, gt=0, description="offset keeping weights bounded at low SNR")


class P2(MSEWeighting):
    """``w_t = 1 / (k + SNR(t)) ** gamma``, applied to each sample's MSE before averaging.

    (The official DTR code averages before weighting through a broadcasting slip; this does not.)
    """

    def __init__(self, **params: float):
        """``gamma``, ``k``: see the params model (their defaults live there)."""
        super().__init__()
        p = parse_params(P2Params, params, "p2")
        self.gamma = float(p.gamma)
        self.k = float(p.k)

    def weight(self, t: Tensor, diffusion) -> Tensor:
        return (self.k + diffusion.snr(t)) ** (-self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, k={self.k:g}"


@hookimpl
def dtr_register_loss_weightings(register):
    register("p2", P2, params=P2Params,
             description="P2: per-sample MSE weighted by 1 / (k + SNR)^gamma (Choi et al. 2022)")
