"""``learned_window``: a learned soft channel window per timestep and routed layer.

Each routed layer ``l`` owns logits ``[T, C_l]``; timestep ``t`` gates channel ``c`` by
``g = sigmoid(logits[t, c])``, applied as DTR's routed residual ``x + F(g * x)``. The logits start at
``+sharpness`` inside DTR's window (Park et al., ICLR 2024, eq. 4, ``alpha``/``beta`` as in the ``dtr``
strategy) and ``-sharpness`` outside, so training starts near DTR and learns a soft window from there.

A smoothness loss keeps neighbouring timesteps' gates close (tasks next to each other are alike, the
premise of DTR's sliding window):
``smooth_weight * mean_l mean_{t, c} (g_l[t + 1, c] - g_l[t, c]) ** 2``, added to the training loss in
steps where the gates were used. The gates depend on the timestep alone, so sampling reads the
``[T, C]`` tables (``task_tables``) and runs no routing network.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import dtr_plugins
from dtr_plugins.core.continuous_routing import grid_rows
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.routing import gate_like
from dtr_plugins.strategies.dtr import SlidingWindow


class LearnedWindowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(4.0, gt=0, description="DTR window exponent of the initial window")
    beta: float = Field(0.8, gt=0, le=1, description="fraction of channels in the initial window")
    sharpness: float = Field(3.0, gt=0, description="initial logit magnitude: +s inside the window, -s outside")
    smooth_weight: float = Field(1.0, ge=0, description="weight of the smoothness loss over neighbouring timesteps")
    lr: float = Field(1.0e-2, gt=0, description="learning rate of the gate logits")
    weight_decay: float = Field(0.0, ge=0, description="weight decay of the gate logits")


class LearnedWindow(nn.Module):
    """Per-layer, per-timestep gate logits (see the module docstring). Built unbound; the plan calls
    :meth:`bind` with the model's routed layers."""

    learned_routing: ClassVar[bool] = True

    def __init__(self, alpha: float, beta: float, sharpness: float, smooth_weight: float, lr: float,
                 weight_decay: float):
        super().__init__()
        self.alpha, self.beta, self.sharpness = alpha, beta, sharpness
        self.smooth_weight, self.lr, self.weight_decay = smooth_weight, lr, weight_decay
        self.logits = nn.ParameterList()
        self._used = False  # gates used in a training forward pass since the last pop_aux_losses

    def __repr__(self) -> str:
        return (f"learned_window(alpha={self.alpha}, beta={self.beta}, sharpness={self.sharpness}, "
                f"smooth_weight={self.smooth_weight})")

    def bind(self, layer_units: Sequence[int], num_tasks: int, *, site: str, cond_dim: int | None) -> None:
        """One ``[T, C]`` logit table per routed layer, ``+sharpness`` inside DTR's window, else ``-sharpness``."""
        if len(self.logits):
            raise RuntimeError("learned_window is already bound to a model")
        window = SlidingWindow(alpha=self.alpha, beta=self.beta)
        for layer, channels in enumerate(layer_units):
            mask = window.mask_table(num_tasks, channels, layer=layer, num_layers=len(layer_units))
            self.logits.append(nn.Parameter(torch.where(mask, self.sharpness, -self.sharpness).float()))

    def layer_gate(self, layer: int, x: torch.Tensor, tasks: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """``sigmoid(logits[layer][tasks])`` laid out against ``x`` (``[N, 1, C]`` / ``[N, C, 1, 1]``). Float
        ``tasks`` (noise levels in [0, 1], flow matching) read the nearest row ``round(u * (T - 1))``."""
        table = self.logits[layer]
        rows = tasks if not tasks.is_floating_point() else grid_rows(tasks, table.shape[0])
        if self.training and torch.is_grad_enabled():
            self._used = True
        return gate_like(torch.sigmoid(table.index_select(0, rows.to(table.device))), x)

    def pop_aux_losses(self) -> dict[str, torch.Tensor]:
        """``{"smooth": weighted smoothness loss}`` after a training forward pass, else ``{}``."""
        if not self._used:
            return {}
        self._used = False
        terms = [(torch.sigmoid(t[1:]) - torch.sigmoid(t[:-1])).square().mean() for t in self.logits]
        return {"smooth": self.smooth_weight * torch.stack(terms).mean()}

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.logits.parameters()), "lr": self.lr, "weight_decay": self.weight_decay}]

    def task_tables(self, num_tasks: int) -> list[torch.Tensor] | None:
        if any(t.shape[0] != num_tasks for t in self.logits):
            raise ConfigError(f"learned_window: bound to {self.logits[0].shape[0]} timesteps, asked for {num_tasks}")
        return [torch.sigmoid(t) for t in self.logits]


@dtr_plugins.hookimpl
def dtr_register_strategies(register):
    register("learned_window", LearnedWindow, params=LearnedWindowParams,
             description="learned soft window per timestep and layer (starts at DTR's), smoothness loss over "
                         "neighbouring timesteps")
