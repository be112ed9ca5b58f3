"""Small learned routing strategies (contract v2) for the tests: one task-only, one token-dependent."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from dtr_plugins.core.continuous_routing import grid_rows
from dtr_plugins.core.routing import gate_like


class TaskGate(nn.Module):
    """``sigmoid(logits[l][task])`` per routed layer ``l``, logits ``[T, C]`` starting at ``init``; aux loss
    ``weight * mean(gate)`` (a sparsity push) collected in training forward passes."""

    learned_routing: ClassVar[bool] = True

    def __init__(self, init: float = 2.0, weight: float = 0.0, lr: float | None = None):
        super().__init__()
        self.init, self.weight, self.lr = init, weight, lr
        self.logits = nn.ParameterList()
        self._aux: list[torch.Tensor] = []

    def __repr__(self) -> str:
        return f"task_gate(init={self.init}, weight={self.weight})"

    def bind(self, layer_units: Sequence[int], num_tasks: int, *, site: str, cond_dim: int | None) -> None:
        gen = torch.Generator().manual_seed(0)
        for c in layer_units:
            self.logits.append(nn.Parameter(self.init + 0.5 * torch.randn(num_tasks, c, generator=gen)))

    def _rows(self, layer: int, tasks: torch.Tensor) -> torch.Tensor:
        table = self.logits[layer]
        index = grid_rows(tasks, table.shape[0]) if tasks.is_floating_point() else tasks
        return torch.sigmoid(table.index_select(0, index))

    def layer_gate(self, layer: int, x: torch.Tensor, tasks: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        rows = self._rows(layer, tasks)
        if self.training and torch.is_grad_enabled():
            self._aux.append(rows.mean())
        return gate_like(rows, x)

    def pop_aux_losses(self) -> dict[str, torch.Tensor]:
        aux, self._aux = self._aux, []
        return {"sparsity": self.weight * torch.stack(aux).mean()} if aux else {}

    def param_groups(self) -> list[dict[str, Any]]:
        group: dict[str, Any] = {"params": list(self.logits.parameters()), "weight_decay": 0.0}
        if self.lr is not None:
            group["lr"] = self.lr
        return [group]

    def task_tables(self, num_tasks: int) -> list[torch.Tensor] | None:
        return [torch.sigmoid(t) for t in self.logits]


class TokenGate(TaskGate):
    """Gate ``sigmoid(logits[task] + x @ w)`` per token ``[N, L, C]``: depends on the input, so no tables."""

    def bind(self, layer_units: Sequence[int], num_tasks: int, *, site: str, cond_dim: int | None) -> None:
        super().bind(layer_units, num_tasks, site=site, cond_dim=cond_dim)
        self.proj = nn.ModuleList(nn.Linear(c, c) for c in layer_units)

    def layer_gate(self, layer: int, x: torch.Tensor, tasks: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(self.logits[layer].index_select(0, tasks)[:, None, :] + self.proj[layer](x))

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.parameters())}]

    def task_tables(self, num_tasks: int) -> list[torch.Tensor] | None:
        return None
