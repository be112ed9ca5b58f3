"""A published-style DTR DiT, written here from the published description, to measure its routing costs.

The published DTR code routes a DiT as follows (docs/design.md, "1. Routing", describes what this project
does instead):

- every block owns a task router holding a **float** ``[T, C]`` mask buffer (persistent, so it is saved in
  every checkpoint and repeated in the EMA copy), even when all blocks share the same table;
- on **every forward** the model stores the timesteps in a **module-level global** and walks **all modules**
  (``model.apply``); each router it meets re-selects its active mask ``[N, 1, C]`` from its own buffer;
- the block computes ``u = x * m; u = u + attn; u = u + mlp`` and the router combines it **unfused** with the
  skip, ``x * (1 - m) + u``.

:class:`PublishedStyleDiT` reproduces exactly that cost structure around the *same* modules (and therefore the
same weights) as a :class:`dtr_plugins.backbones.dit.DiT`, so a benchmark can run both side by side. Without
routing it is the official DiT forward (``x = x + gate * attn(...)``, ``x = x + gate * mlp(...)``, no walk), the
baseline's own vanilla. The outputs equal this project's DiT with the same table (checked by
``tests/test_benchmarks.py``). A library of the benchmark scripts, not a script itself.
"""
from __future__ import annotations

import torch
from torch import nn

from dtr_plugins.backbones.dit import DiT

#: The active timesteps, set by the model before it walks its modules (the published mechanism).
_ACTIVE_TASK: torch.Tensor | None = None


def _change_task(module: nn.Module) -> None:
    if hasattr(module, "active_task"):
        module.set_active_task(_ACTIVE_TASK)


class FloatTaskRouter(nn.Module):
    """One block's router: its own float ``[T, C]`` table, the active mask it re-selects, the unfused combine."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("unit_mapping", table.float())  # persistent: in the state dict, EMA and checkpoints
        self.active_task: torch.Tensor | int = 0
        self.active_mask: torch.Tensor | None = None

    def set_active_task(self, active_task: torch.Tensor) -> None:
        self.active_task = active_task
        # The index is rebuilt from the task value in every router (a float ones-vector times the task, as long).
        index = (torch.ones(len(active_task), device=active_task.device) * active_task).long()
        self.active_mask = torch.index_select(self.unit_mapping, 0, index).unsqueeze(1)

    def forward(self, routed: torch.Tensor, block_input: torch.Tensor) -> torch.Tensor:
        return block_input * (1 - self.active_mask) + routed


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PublishedStyleBlock(nn.Module):
    """A DiT block around the submodules of one of our blocks; routed when it has a router."""

    def __init__(self, block: nn.Module, router: FloatTaskRouter | None):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.adaLN_modulation = block.adaLN_modulation
        self.routing = router

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        if self.routing is None:  # the official DiT block
            x = x + gate_msa.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
            return x + gate_mlp.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))
        routed = x * self.routing.active_mask
        routed = routed + gate_msa.unsqueeze(1) * self.attn(_modulate(self.norm1(routed), shift_msa, scale_msa))
        routed = routed + gate_mlp.unsqueeze(1) * self.mlp(_modulate(self.norm2(routed), shift_mlp, scale_mlp))
        return self.routing(routed, x)


class PublishedStyleDiT(nn.Module):
    """The published routing mechanism around the modules (and weights) of ``base``.

    ``tables``: one bool ``[T, C]`` table per block (each block gets its own float copy, as published), or None
    for the official DiT without routing. ``base``'s parameters are shared, not copied.
    """

    def __init__(self, base: DiT, tables: list[torch.Tensor] | None):
        super().__init__()
        self.x_embedder, self.t_embedder, self.y_embedder = base.x_embedder, base.t_embedder, base.y_embedder
        self.pos_embed = base.pos_embed
        self.final_layer = base.final_layer
        self.routed = tables is not None
        routers = [FloatTaskRouter(t) for t in tables] if self.routed else [None] * len(base.blocks)
        self.blocks = nn.ModuleList([PublishedStyleBlock(b, r) for b, r in zip(base.blocks, routers)])
        self.num_classes = base.num_classes
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self._unpatchify = base.unpatchify

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.routed:
            global _ACTIVE_TASK
            _ACTIVE_TASK = t
            self.apply(_change_task)
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            h = block(h, c)
        return self._unpatchify(self.final_layer(h, c))


def published_tables(strategy, num_tasks: int, channels: int, depth: int) -> list[torch.Tensor]:
    """The bool table of every block from one of this project's strategies (the float copies are made later)."""
    return [strategy.mask_table(num_tasks, channels, layer=i, num_layers=depth) for i in range(depth)]


def published_mask_bytes(depth: int, num_tasks: int, channels: int) -> int:
    """Bytes of the published float mask buffers of one model (``depth x T x C x 4``)."""
    return depth * num_tasks * channels * 4
