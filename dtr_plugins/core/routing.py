"""RoutingPlan: the mask tables of one model, and the routed residual every backbone uses.

The plan holds one ``bool`` buffer per *distinct* table (DTR gives every layer of one width the same
table, so a DiT has one), gathers the rows for a batch of timesteps once per forward pass, and hands
them to the blocks as arguments. Layers whose table is all ``True`` (vanilla) get ``None`` and run the
plain block: no mask op at all. There is no global state and no walk over the module tree.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal, Sequence

import torch
from torch import nn

from .errors import PluginError


def routed_residual(x: torch.Tensor, mask: torch.Tensor | None,
                    branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x + branch(mask * x)``; the plain ``x + branch(x)`` when ``mask`` is None.

    Inactive channels reach the branch as zeros and pass through the skip untouched. ``mask`` must
    already broadcast against ``x`` (``[N, 1, C]`` for tokens, ``[N, C, 1, 1]`` for feature maps).
    """
    return x + branch(x if mask is None else x * mask)


class RoutingPlan(nn.Module):
    """Mask tables for a list of routed layers, deduplicated by content.

    Args:
        strategy: an object with ``mask_table(num_tasks, channels, *, layer, num_layers)``.
        layer_channels: channel count of each routed layer, in forward order.
        num_tasks: number of training timesteps ``T``.
    """

    def __init__(self, strategy: Any, layer_channels: Sequence[int], num_tasks: int, continuous: Any = None):
        super().__init__()
        # flow: float times -> tasks u in [0, 1] (a core.continuous_routing.ContinuousTasks); None: index only
        self.continuous = continuous
        self.strategy_repr = repr(strategy)
        self.num_tasks = int(num_tasks)
        self.layer_channels = [int(c) for c in layer_channels]
        self.layer_table: list[int | None] = []
        tables: list[torch.Tensor] = []
        for layer, channels in enumerate(self.layer_channels):
            table = strategy.mask_table(self.num_tasks, channels, layer=layer, num_layers=len(self.layer_channels))
            _check_table(table, self.num_tasks, channels, self.strategy_repr)
            if bool(table.all()):
                self.layer_table.append(None)
                continue
            for index, known in enumerate(tables):
                if known.shape == table.shape and torch.equal(known, table):
                    self.layer_table.append(index)
                    break
            else:
                tables.append(table.contiguous())
                self.layer_table.append(len(tables) - 1)
        for index, table in enumerate(tables):
            # Not persistent: tables follow from the config, so checkpoints keep the official layout.
            self.register_buffer(f"table_{index}", table, persistent=False)
        self.num_tables = len(tables)

    @property
    def is_dense(self) -> bool:
        """True when no layer is routed (vanilla): the backbone then runs its plain blocks."""
        return self.num_tables == 0

    def table(self, index: int) -> torch.Tensor:
        return getattr(self, f"table_{index}")

    def tables(self) -> list[tuple[torch.Tensor, list[int]]]:
        """Each distinct table with the routed layers that use it (for heatmaps and reports)."""
        return [(self.table(i), [layer for layer, j in enumerate(self.layer_table) if j == i])
                for i in range(self.num_tables)]

    def gather(self, t: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor | None]:
        """The ``[N, C]`` mask rows of every layer for timesteps ``t``: one index op per distinct table."""
        if self.num_tables == 0:
            return [None] * len(self.layer_table)
        if t.is_floating_point():  # continuous time (flow): closed form or nearest row, see continuous_routing
            if self.continuous is None:
                raise ValueError("float times given to a routing plan built for timestep indices")
            return self.continuous.gather(self, t, dtype)
        rows = [self.table(i).index_select(0, t).to(dtype) for i in range(self.num_tables)]
        return [None if j is None else rows[j] for j in self.layer_table]

    def extra_repr(self) -> str:
        return f"strategy={self.strategy_repr}, tasks={self.num_tasks}, layers={len(self.layer_table)}, tables={self.num_tables}"


def _check_table(table: Any, num_tasks: int, channels: int, who: str) -> None:
    if not isinstance(table, torch.Tensor) or table.dtype != torch.bool or tuple(table.shape) != (num_tasks, channels):
        got = f"{getattr(table, 'dtype', type(table).__name__)} {tuple(getattr(table, 'shape', ()))}"
        raise PluginError(f"strategy {who}: mask_table must return a torch.bool tensor of shape "
                          f"({num_tasks}, {channels}), got {got}")


class RoutedBackbone(nn.Module):
    """Base class of backbones: declares routed layers and receives the plan built for them.

    Subclasses implement ``routed_channels()`` and ``forward(x, t, y=None)``; in ``forward`` they call
    ``self.layer_masks(t, x.dtype)`` once and pass each block its row (or None). The full contract
    (``in_channels``, ``input_size``, ``num_classes``, ``null_class``) is
    :class:`dtr_plugins.core.contracts.Backbone`.
    """

    #: "pixels": works on images (identity codec); "latents": on a codec's latents, whose shape sets
    #: ``in_channels`` and ``input_size`` (see :mod:`dtr_plugins.engine.compose`).
    input_space: ClassVar[Literal["pixels", "latents"]] = "pixels"

    def routed_channels(self) -> list[int]:
        raise NotImplementedError

    def attach_routing(self, plan: RoutingPlan) -> None:
        if len(plan.layer_table) != len(self.routed_channels()):
            raise ValueError("routing plan was built for a different list of routed layers")
        self.add_module("routing", plan)

    @property
    def plan(self) -> RoutingPlan | None:
        return self._modules.get("routing")  # type: ignore[return-value]

    def layer_masks(self, t: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor | None]:
        """Mask rows per routed layer; all None when no plan is attached (the plain model)."""
        plan = self.plan
        if plan is None:
            return [None] * len(self.routed_channels())
        return plan.gather(t, dtype)
