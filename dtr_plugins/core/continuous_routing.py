"""Routing over continuous time: which channels a batch element uses when its task is a real ``u`` in [0, 1].

A discrete process (DDPM) names a task by its timestep index, a row of each ``[T, C]`` mask table. A
continuous process (flow matching) calls the model with a float time; :class:`ContinuousTasks` turns it
into the **noise level** ``u`` in [0, 1], ordered like DDPM's index: ``u = 0`` clean, ``u = 1`` pure noise
(``u = 1 - t`` when the process's time runs from noise at 0 to data at 1, as SiT's).

- Strategies with a closed form over ``u`` (:class:`ContinuousStrategy`, e.g. ``dtr``'s window
  ``start = round(u ** alpha * (C - n))``) are evaluated at ``u`` itself when ``exact`` is set: nothing is
  quantised.
- Every other strategy (a static table), or any strategy when ``exact`` is off, is read at the nearest row
  of its ``T``-row grid over ``u``: ``row = round(u * (T - 1))`` (half to even), i.e. row ``k`` stands for
  ``u = k / (T - 1)``, the same grid DTR's table formula uses.
"""
from __future__ import annotations

from typing import Any

import torch

from dtr_plugins.core.contracts import ContinuousStrategy  # the contract lives with the others


def grid_rows(u: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """Nearest row ``round(u * (T - 1))`` of a ``T``-row table for noise levels ``u`` in [0, 1] (int64)."""
    return torch.round(u.double().clamp(0, 1) * (num_tasks - 1)).long()


class ContinuousTasks:
    """How a :class:`RoutingPlan` routes float times. ``data_at_one``: the model's time is 1 at the data
    (``u = 1 - t``); else it is already the noise level (``u = t``). ``exact``: use closed forms."""

    def __init__(self, strategy: Any, *, exact: bool = True, data_at_one: bool = True):
        self.strategy = strategy
        self.exact = bool(exact) and isinstance(strategy, ContinuousStrategy)
        self.data_at_one = bool(data_at_one)

    def __repr__(self) -> str:
        return f"continuous(u={'1-t' if self.data_at_one else 't'}, {'closed form' if self.exact else 'nearest row'})"

    def noise_level(self, t: torch.Tensor) -> torch.Tensor:
        """``u`` in [0, 1] (float64) for the model's times ``t`` ``[B]``."""
        t = t.double()
        return (1 - t if self.data_at_one else t).clamp(0, 1)

    def rows(self, t: torch.Tensor, num_tasks: int) -> torch.Tensor | None:
        """The nearest table rows (int64 ``[B]``, on ``t``'s device) for the model's float times ``t`` ``[B]``,
        or None when the masks come in closed form (:meth:`closed_form`)."""
        if self.exact:
            return None
        return grid_rows(self.noise_level(t), num_tasks).to(t.device)

    def closed_form(self, u: torch.Tensor, channels: int, *, layer: int, num_layers: int) -> torch.Tensor:
        """``bool [B, channels]``: the strategy's mask of routed layer ``layer`` at noise levels ``u`` ``[B]``."""
        mask: torch.Tensor = self.strategy.mask_for_u(u, channels, layer=layer, num_layers=num_layers)
        return mask
