"""``dtr``: Denoising Task Routing's sliding window (Park et al., ICLR 2024)."""
from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params


class DTRParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(4.0, gt=0, description="window speed exponent; > 1 moves fastest at noisy timesteps")
    beta: float = Field(0.8, gt=0, le=1, description="share of channels active per task")


def window_starts(num_tasks: int, channels: int, alpha: float, beta: float) -> np.ndarray:
    """First active channel per task: ``round((t / (T-1)) ** alpha * (C - n))``, float64, half-to-even."""
    n = int(np.floor(beta * channels))
    return np.round(np.linspace(0, 1, num_tasks) ** alpha * (channels - n)).astype(np.int64)


class SlidingWindow:
    """Task ``t`` activates ``n = floor(beta * C)`` contiguous channels starting at ``window_starts(...)[t]``.

    Neighbouring timesteps share almost all channels; the same table serves every layer of one width.
    """

    def __init__(self, **params: float):
        """``alpha``, ``beta``: see :class:`DTRParams` (their defaults live there)."""
        p = parse_params(DTRParams, params, "dtr")
        self.alpha = p.alpha
        self.beta = p.beta

    def mask_table(self, num_tasks: int, channels: int, *, layer: int = 0, num_layers: int = 1) -> torch.Tensor:
        n = int(np.floor(self.beta * channels))
        start = torch.from_numpy(window_starts(num_tasks, channels, self.alpha, self.beta))[:, None]
        c = torch.arange(channels)[None, :]
        return (c >= start) & (c < start + n)

    def mask_for_u(self, u: torch.Tensor, channels: int, *, layer: int = 0, num_layers: int = 1) -> torch.Tensor:
        """The window in closed form over continuous noise levels ``u`` ``[B]`` in [0, 1] (0 clean, 1 noisy):
        start ``round(u ** alpha * (C - n))`` in float64, half-to-even; ``bool [B, C]``. Equals
        ``mask_table(T, C)[k]`` at ``u = k / (T - 1)`` (see dtr_plugins.core.continuous_routing)."""
        n = int(np.floor(self.beta * channels))
        start = torch.round(u.double().clamp(0, 1) ** self.alpha * (channels - n)).long()[:, None]
        c = torch.arange(channels, device=u.device)[None, :]
        return (c >= start) & (c < start + n)

    def __repr__(self) -> str:
        return f"dtr(alpha={self.alpha:g}, beta={self.beta:g})"


@hookimpl
def dtr_register_strategies(register):
    register("dtr", SlidingWindow, params=DTRParams,
             description="DTR sliding window: neighbouring timesteps share channels, noisy ones own more")
