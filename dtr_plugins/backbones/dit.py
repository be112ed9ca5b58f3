# This file is over 500 lines because it is one model family in one file, read beside the official DiT models.py.
"""``dit``: the Diffusion Transformer (Peebles & Xie, 2023) with every block routed.

State-dict keys, initialisation and numerics follow the official DiT release, so its checkpoints (and
the official DTR ones, through :func:`dtr_plugins.core.checkpoint.load_checkpoint`) load as they are.

A routed block receives one mask row per sample, ``m`` of shape ``[N, 1, C]``, and computes
``x + F(m * x)`` with ``F(u) = block(u) - u``: the masked tokens go through attention and MLP
(adaLN-Zero conditioning unchanged, LayerNorm over all channels), the branch output is dense, and
inactive channels pass through the skip untouched. This is the published DTR block. Without a mask
(vanilla routing, or no plan at all) the block is the plain DiT block.

Routing sites (``routing.site``; the strategy's table is laid over the site's units, DTR's window formula
unchanged with units in place of channels):

- ``input`` (default): the block input channels, as above; ``hidden_size`` units per block.
- ``heads``: attention heads, one unit per head (``num_heads`` units, so DTR's ``floor(beta * H)``
  heads: 4 of DiT-S's 6 at beta 0.8). An inactive head's attention output is zero before the output
  projection: ``proj(concat_h m_h * softmax(q_h k_h^T / sqrt(d)) v_h)``.
- ``mlp``: MLP hidden units, each a group of ``head_dim = hidden_size / num_heads`` consecutive hidden
  channels (``mlp_ratio * num_heads`` units, 24 for DiT-S; single channels if ``head_dim`` does not divide
  the MLP width): an inactive unit's activations are zero before ``fc2``: ``fc2(m * gelu(fc1(u)))``.
  Head-wide groups keep the sliced matrices at sizes the matmul kernels block well (on the CPU, 1228 of
  DiT-S's 1536 single channels ran ``fc1`` 40% slower than 1216 = 19 groups of 64).
- ``heads_mlp``: both, two routed layers per block (heads, then MLP, in forward order).

Against DyDiT (Zhao et al. 2024, "Dynamic Diffusion Transformer", arXiv 2410.03456; read in
``DyDiT/models.py`` of github.com/alibaba-damo-academy/DyDiT, commit ``0ddc509``), whose width routing
masks the same two places: heads are masked as there (a head's attention output zeroed before ``proj``).
The MLP units are finer: DyDiT splits the MLP hidden layer into ``num_heads`` groups of
``mlp_hidden / num_heads = mlp_ratio * head_dim`` channels, here a unit is ``head_dim`` channels, so there are
``mlp_ratio`` times as many units, each ``mlp_ratio`` times narrower (DiT-S at ``mlp_ratio`` 4: 24 units of 64
channels here, 6 groups of 256 in DyDiT). A table with DyDiT's MLP granularity is one whose ``mlp_ratio``
consecutive units per group are equal; DTR's window over our units does not give that. Two smaller
differences: DyDiT zeroes the groups after ``fc1`` and before the GELU (the same result for 0/1 masks, as
``gelu(0) = 0``), and its routers always keep the first head and the first MLP group, here the table decides
every unit.

At these sites the block input, LayerNorms and adaLN are untouched and the zeroed units contribute
nothing, so when a batch shares one timestep (always in sampling) the block runs only the active
units: the active heads' q/k/v rows and out-projection columns, the active ``fc1`` rows and ``fc2``
columns (views for DTR's contiguous window). Mixed timesteps and training mode run the masked dense
path; the two agree to float rounding. Learned strategies may act at these sites too (``[N, units]`` gate rows,
e.g. ``dydit_width``); their exported 0/1 task tables take the same sliced path at a shared timestep. With
``train.timestep_buckets`` (:mod:`dtr_plugins.core.buckets`) a training forward of a static strategy sorts the
batch by its rows of the tables, splits it into buckets and runs each bucket on the union of its samples'
units, each sample masked inside it (:class:`BucketedUnits` routes; the embeddings and the final layer see the
batch in its own order): the same losses and gradients as the masked path, to float rounding. No parameters
are added: checkpoints keep the official layout.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from torch import nn

from dtr_plugins.core.buckets import BatchBuckets, BucketedUnits
from dtr_plugins.core.compute import run_block
from dtr_plugins.core.contracts import TokenLayout
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.routing import INPUT_SITE, ActiveUnits, RoutedBackbone, routed_residual
from dtr_plugins.core.token_routing import TokenRoutedBlocks

#: a unit-site route of one layer: None (all units), a mask ``[N, units]`` (dense), the active units (sliced)
#: or, in training with timestep buckets, each bucket's union and masks (:class:`BucketedUnits`)
UnitRoute = torch.Tensor | ActiveUnits | BucketedUnits | None


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift``, with ``shift`` and ``scale`` already shaped ``[N, 1, C]``."""
    return x * (1 + scale) + shift


#################################################################################
#                     Position and timestep embeddings                          #
#################################################################################

def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``[sin(p * w), cos(p * w)]`` for ``dim // 2`` frequencies ``w_i = 10000 ** (-i / (dim / 2))``."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2D position embedding ``[grid_size ** 2, dim]``, row-major over the patch grid.

    The first half of the channels encodes the column coordinate, the second half the row coordinate
    (the layout of the MAE / DiT embedding, so official weights see the same positions).
    """
    coords = np.arange(grid_size, dtype=np.float32)
    cols, rows = np.meshgrid(coords, coords)
    return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(t * f), sin(t * f)]`` of (possibly fractional) timesteps: ``[N, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


#################################################################################
#                                  Modules                                      #
#################################################################################

class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches of an ``[N, C, H, W]`` image to tokens ``[N, H*W/p^2, D]``."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Timesteps -> sinusoidal features -> two-layer MLP (SiLU)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # a no-op for float32 models


class LabelEmbedder(nn.Module):
    """Class labels -> vectors. With ``dropout_prob > 0`` the table has one extra row, the null class
    ``num_classes``, and training replaces each label by it with probability ``dropout_prob`` (CFG)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv projection, ``scaled_dot_product_attention``), heads routable."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, heads: UnitRoute = None) -> torch.Tensor:
        """``x``: ``[N, T, D]`` -> ``[N, T, D]``. ``heads``: None (all heads), a mask ``[N, H]`` that zeroes
        inactive heads' outputs before ``proj`` (dense), :class:`ActiveUnits` (only those heads run) or
        :class:`BucketedUnits` (per bucket of the sorted batch, its union of heads, masked per sample)."""
        if isinstance(heads, BucketedUnits):
            return self._bucketed(x, heads)
        if isinstance(heads, ActiveUnits):
            return self._sliced(x, heads)
        n, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)                        # [N, H, T, hd]
        if heads is not None:
            out = out * heads[:, :, None, None]
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))

    def _bucketed(self, x: torch.Tensor, route: BucketedUnits) -> torch.Tensor:
        """Each bucket of the sorted batch on its union of heads, its samples masked inside it."""
        dim = x.shape[-1]
        head_dim = dim // self.num_heads
        taken = zip(route.take(self.qkv.weight.view(3, dim, dim), 1, head_dim),
                    route.take(self.qkv.bias.view(3, dim), 1, head_dim), route.take(self.proj.weight, 1, head_dim))
        return torch.cat([self.forward(x[part], mask) if heads is None else self._sliced(x[part], heads, mask, w)
                          for (part, heads, mask), w in zip(route.parts(), taken)])

    def _sliced(self, x: torch.Tensor, heads: ActiveUnits, mask: torch.Tensor | None = None,
                taken: tuple[Any, ...] | None = None) -> torch.Tensor:
        """Only the active heads: their q/k/v rows of ``qkv`` and their columns of ``proj`` (``taken``: those
        slices, already taken); ``mask`` ``[N, heads.count]`` zeroes a sample's heads among them (None: all run)."""
        n, tokens, dim = x.shape
        if heads.count == 0:  # every head off: the branch is proj's bias
            return torch.zeros_like(x) + self.proj.bias
        head_dim = dim // self.num_heads
        weight, bias, proj = taken if taken is not None else (
            heads.take(self.qkv.weight.view(3, dim, dim), 1, head_dim),     # [3, k*hd, D]
            heads.take(self.qkv.bias.view(3, dim), 1, head_dim),            # [3, k*hd]
            heads.take(self.proj.weight, 1, head_dim))                      # [D, k*hd]
        width = heads.count * head_dim  # one matmul for q, k and v: their rows side by side (a copy of the slices)
        qkv = F.linear(x, weight.reshape(3 * width, dim), bias.reshape(3 * width))
        q, k, v = qkv.reshape(n, tokens, 3, heads.count, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)                        # [N, k, T, hd]
        if mask is not None:
            out = out * mask[:, :, None, None]
        out = out.transpose(1, 2).reshape(n, tokens, heads.count * head_dim)
        return F.linear(out, proj, self.proj.bias)


class Mlp(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``, hidden units routable; a unit is ``unit_width`` consecutive hidden channels."""

    def __init__(self, dim: int, hidden: int, unit_width: int = 1):
        super().__init__()
        if hidden % unit_width:
            raise ValueError(f"unit_width {unit_width} must divide the MLP width {hidden}")
        self.unit_width = unit_width
        self.num_units = hidden // unit_width
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, units: UnitRoute = None) -> torch.Tensor:
        """``x``: ``[N, T, D]`` -> ``[N, T, D]``. ``units``: None (all hidden units), a mask ``[N, num_units]``
        applied after the activation (dense), :class:`ActiveUnits` (only those units' ``fc1`` rows and
        ``fc2`` columns run) or :class:`BucketedUnits` (per bucket, its union of units, masked per sample)."""
        if isinstance(units, BucketedUnits):
            return self._bucketed(x, units)
        if isinstance(units, ActiveUnits):
            return self._sliced(x, units)
        return self.fc2(self._masked(self.act(self.fc1(x)), units))

    def _masked(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Hidden activations ``[N, T, k * unit_width]`` times the unit mask ``[N, k]`` (None: unchanged)."""
        if mask is None:
            return h
        n, tokens, hidden = h.shape
        return (h.view(n, tokens, mask.shape[1], self.unit_width) * mask[:, None, :, None]).view(n, tokens, hidden)

    def _bucketed(self, x: torch.Tensor, route: BucketedUnits) -> torch.Tensor:
        """Each bucket of the sorted batch on its union of units, its samples masked inside it."""
        w = self.unit_width
        taken = zip(route.take(self.fc1.weight, 0, w), route.take(self.fc1.bias, 0, w),
                    route.take(self.fc2.weight, 1, w))
        return torch.cat([self.fc2(self._masked(self.act(self.fc1(x[part])), mask)) if units is None
                          else self._sliced(x[part], units, mask, ws)
                          for (part, units, mask), ws in zip(route.parts(), taken)])

    def _sliced(self, x: torch.Tensor, units: ActiveUnits, mask: torch.Tensor | None = None,
                taken: tuple[Any, ...] | None = None) -> torch.Tensor:
        """Only the active units' ``fc1`` rows and ``fc2`` columns (``taken``: those slices, already taken);
        ``mask`` ``[N, units.count]`` zeroes a sample's units among them (None: all run)."""
        if units.count == 0:
            return torch.zeros_like(x) + self.fc2.bias
        w = self.unit_width
        fc1, bias, fc2 = taken if taken is not None else (
            units.take(self.fc1.weight, 0, w), units.take(self.fc1.bias, 0, w), units.take(self.fc2.weight, 1, w))
        return F.linear(self._masked(self.act(F.linear(x, fc1, bias)), mask), fc2, self.fc2.bias)


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning, routed at its input (a mask row ``[N, 1, C]``) or at its
    attention heads and MLP hidden units (see the module docstring)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden, head_dim = int(hidden_size * mlp_ratio), hidden_size // num_heads
        self.mlp = Mlp(hidden_size, mlp_hidden, unit_width=head_dim if mlp_hidden % head_dim == 0 else 1)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None,
                heads: UnitRoute = None, mlp: UnitRoute = None) -> torch.Tensor:
        """``x``: ``[N, T, D]``, ``c``: ``[N, D]``; ``mask``: input site ``[N, 1, D]`` (a learned gate also
        ``[N, T, D]``); ``heads`` / ``mlp``: routes of :meth:`Attention.forward` / :meth:`Mlp.forward`."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)

        def branch(u: torch.Tensor) -> torch.Tensor:
            # block(u) - u: both residual updates of the DiT block, the second seeing the first.
            a = gate_msa * self.attn(modulate(self.norm1(u), shift_msa, scale_msa), heads)
            return a + gate_mlp * self.mlp(modulate(self.norm2(u + a), shift_mlp, scale_mlp), mlp)

        return routed_residual(x, mask, branch)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map of each token to its ``p * p * out_channels`` values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#################################################################################
#                                 Parameters                                    #
#################################################################################

_PRESET_FIELDS = ("patch_size", "hidden_size", "depth", "num_heads")


class DiTParams(BaseModel):
    """Parameters of the ``dit`` backbone. ``size`` (``S/2`` ... ``XL/8``) fills depth, width, heads and
    patch from DiT's table; a field given as well must agree with the preset."""

    model_config = ConfigDict(extra="forbid")
    size: str | None = Field(None, description="preset from DiT's table: S, B, L or XL with patch 2, 4 or 8, e.g. B/2")
    patch_size: int | None = Field(None, ge=1, validate_default=True,
                                   description="patch side (2 unless a size says otherwise)")
    hidden_size: int | None = Field(None, ge=4, validate_default=True, description="token width")
    depth: int | None = Field(None, ge=1, validate_default=True, description="number of blocks (all routed)")
    num_heads: int | None = Field(None, ge=1, validate_default=True,
                                  description="attention heads; must divide hidden_size")
    input_size: int = Field(32, ge=1, description="image (or latent) side length; a multiple of patch_size")
    in_channels: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    class_dropout_prob: float = Field(0.1, ge=0, le=1, description="label dropout for classifier-free guidance")
    num_classes: int = Field(1000, ge=1, description="1 = unconditional (no label dropout)")
    learn_sigma: bool = Field(True, description="predict the variance as well: out_channels = 2 * in_channels")

    @field_validator("size")
    @classmethod
    def _known_size(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value[4:] if value.startswith("DiT-") else value
        if name not in DIT_SIZES:
            raise PydanticCustomError("dit_size", "unknown DiT size '{size}' (allowed: {allowed})",
                                      {"size": value, "allowed": ", ".join(DIT_SIZES)})
        return name

    @field_validator(*_PRESET_FIELDS)
    @classmethod
    def _fill_from_size(cls, value: int | None, info: ValidationInfo) -> int | None:
        if "size" not in info.data:  # the size itself was invalid; that error is reported
            return value
        size = info.data["size"]
        if size is None:
            if value is not None:
                return value
            if info.field_name == "patch_size":
                return 2
            raise PydanticCustomError("dit_missing",
                                      "required unless a size preset is given (allowed sizes: {allowed})",
                                      {"allowed": ", ".join(DIT_SIZES)})
        preset = DIT_SIZES[size][info.field_name]
        if value is not None and value != preset:
            raise PydanticCustomError(
                "dit_conflict", "{value} conflicts with size {size}, which sets {field}={preset} "
                "(drop one of the two)", {"value": value, "size": size, "field": info.field_name, "preset": preset})
        return preset

    @field_validator("hidden_size")
    @classmethod
    def _hidden_multiple_of_4(cls, value: int | None) -> int | None:
        if value is not None and value % 4:
            raise PydanticCustomError("dit_hidden", "must be a multiple of 4 (2D sin-cos position embedding)")
        return value

    @field_validator("num_heads")
    @classmethod
    def _heads_divide_hidden(cls, value: int | None, info: ValidationInfo) -> int | None:
        hidden = info.data.get("hidden_size")
        if value is not None and hidden is not None and hidden % value:
            raise PydanticCustomError("dit_heads", "num_heads={heads} must divide hidden_size={hidden}",
                                      {"heads": value, "hidden": hidden})
        return value

    @field_validator("input_size")
    @classmethod
    def _divisible_by_patch(cls, value: int, info: ValidationInfo) -> int:
        patch = info.data.get("patch_size")
        if patch is not None and value % patch:
            raise PydanticCustomError("dit_input", "input_size={size} must be divisible by patch_size={patch}",
                                      {"size": value, "patch": patch})
        return value


#################################################################################
#                                 Core DiT Model                                #
#################################################################################

class DiT(RoutedBackbone, TokenRoutedBlocks):
    """Diffusion model with a Transformer backbone, ``model(x, t, y=None)``; every block is a routed layer.

    Token routing (``token_routing``, e.g. TREAD; :mod:`dtr_plugins.core.token_routing`): in training forwards
    the router's share of the tokens skips its span of blocks and is put back in place after it.

    ``x``: ``[N, in_channels, input_size, input_size]``; ``t``: ``[N]`` timestep indices; ``y``: ``[N]``
    class labels (``num_classes`` is the null class when ``class_dropout_prob > 0``). Returns
    ``[N, out_channels, input_size, input_size]`` (epsilon, then the variance interpolation when
    ``learn_sigma``).
    """

    def __init__(self, input_size: int = 32, patch_size: int | None = None, in_channels: int = 4,
                 hidden_size: int | None = None, depth: int | None = None, num_heads: int | None = None,
                 mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1, num_classes: int = 1000,
                 learn_sigma: bool = True, size: str | None = None):
        super().__init__()
        p = resolve_dit_params(size=size, input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                               hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                               class_dropout_prob=class_dropout_prob, num_classes=num_classes,
                               learn_sigma=learn_sigma)
        self.size = p.size
        self.input_size = p.input_size
        self.patch_size = p.patch_size
        self.in_channels = p.in_channels
        self.hidden_size = p.hidden_size
        self.depth = p.depth
        self.num_heads = p.num_heads
        self.learn_sigma = p.learn_sigma
        self.out_channels = p.in_channels * 2 if p.learn_sigma else p.in_channels
        self.num_classes = p.num_classes
        # An unconditional model (one class) has no null class and no label dropout (as DTR does).
        self.class_dropout_prob = 0.0 if p.num_classes == 1 else p.class_dropout_prob

        self.x_embedder = PatchEmbed(p.patch_size, p.in_channels, p.hidden_size)
        self.t_embedder = TimestepEmbedder(p.hidden_size)
        self.y_embedder = LabelEmbedder(p.num_classes, p.hidden_size, self.class_dropout_prob)
        self.grid_size = p.input_size // p.patch_size
        # Fixed sin-cos embedding, a frozen parameter so the key matches the official checkpoints.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size ** 2, p.hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(p.hidden_size, p.num_heads, p.mlp_ratio) for _ in range(p.depth)])
        self.final_layer = FinalLayer(p.hidden_size, p.patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def null_class(self) -> int | None:
        """The label of the unconditional embedding for classifier-free guidance (None without one)."""
        return self.num_classes if self.class_dropout_prob > 0 else None

    #: ``input`` (block inputs), ``heads`` (attention heads), ``mlp`` (MLP hidden units) or ``heads_mlp``
    routing_sites = (INPUT_SITE, "heads", "mlp", "heads_mlp")
    bucketed_sites = ("heads", "mlp", "heads_mlp")  # train.timestep_buckets: see train_buckets
    checkpoint_blocks = False  # train.activation_checkpointing: recompute each block in the backward (core/compute.py)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.checkpoint_blocks = bool(enabled)

    def token_layout(self) -> tuple[int, int]:
        """``(blocks, tokens)`` for token routing: the depth and the patch tokens per sample."""
        return len(self.blocks), self.grid_size ** 2

    #: (block, sink) of :meth:`tap_block` (None: no tap); set only around a training step, never copied to an EMA
    _tap: tuple[int, Callable[[torch.Tensor], None]] | None = None

    def block_layout(self) -> TokenLayout:
        """:class:`~dtr_plugins.core.contracts.SupportsBlockTokens`: ``depth`` blocks, ``hidden_size``-wide tokens
        on the ``input_size / patch_size`` square patch grid; with a token router, the blocks of its span but the
        last hold only the kept tokens in training (``partial``)."""
        router = self.token_router
        partial = tuple(range(router.start + 1, router.end + 1)) if router is not None else ()
        return TokenLayout(blocks=self.depth, width=self.hidden_size, grid=(self.grid_size, self.grid_size),
                           partial=partial)

    def tap_block(self, block: int, sink: Callable[[torch.Tensor], None] | None) -> None:
        """``sink(h)`` gets block ``block``'s output tokens ``[N, T, D]`` (1-based) in each forward; None: no tap."""
        self._tap = None if sink is None else (block, sink)

    def _sink(self, layer: int) -> Callable[[torch.Tensor], None] | None:
        """The tap's sink when it reads the output of ``layer`` (0-based), else None."""
        return self._tap[1] if self._tap is not None and layer + 1 == self._tap[0] else None

    def routed_channels(self, site: str = INPUT_SITE) -> list[int]:
        """Units per routed layer at ``site``: ``hidden_size`` per block (input), ``num_heads`` (heads),
        MLP units of ``head_dim`` channels (mlp), or both per block, heads first (heads_mlp). Raises
        ConfigError for other sites."""
        self.check_site(site)
        heads, mlp = self.num_heads, self.blocks[0].mlp.num_units
        per_block = {INPUT_SITE: [self.hidden_size], "heads": [heads], "mlp": [mlp], "heads_mlp": [heads, mlp]}[site]
        return per_block * self.depth

    learned_gates = True  # learned strategies (contract v2) gate the block inputs, seeing c [N, D]
    learned_sites = routing_sites  # ... or the heads / MLP units: gate rows [N, units], sliced from 0/1 tables
    expert_blocks = ("blocks.",)  # time experts with granularity block: a copy of the transformer blocks each
    def routing_cond_dim(self) -> int | None:
        return self.hidden_size  # c = t_embedder(t) + y_embedder(y)

    def block_routes(self, t: torch.Tensor, dtype: torch.dtype,
                     device: torch.device) -> list[tuple[torch.Tensor | None, UnitRoute, UnitRoute]]:
        """``(input mask [N, 1, D], heads route, mlp route)`` per block for timesteps ``t`` ``[N]``.

        At a unit site, in eval mode, a batch that shares one timestep gets :class:`ActiveUnits` (sliced
        execution, unless the plan has ``slice_shared=False``); mixed timesteps and training mode get mask
        rows (masked dense; training never pays the host sync of the shared-timestep check). A learned plan
        gives ``[]`` (the blocks ask it for their gates) unless its exported 0/1 tables allow the sliced path.
        """
        plan = self.plan
        if plan is None or plan.is_dense:
            return [(None, None, None)] * self.depth
        if plan.is_learned:  # exported 0/1 tables at a shared timestep: sliced; else gates per block (forward)
            units = None if self.training or not plan.slice_shared else plan.learned_active_units(t, device)
            if units is None:
                return []
            routes: list[Any] = units
        elif plan.site == INPUT_SITE:
            return [(None if m is None else m.unsqueeze(1), None, None) for m in plan.gather(t, dtype)]
        else:
            units = plan.shared_units(t, device) if plan.slice_shared and not self.training else None
            routes = plan.gather(t, dtype) if units is None else units
        return self._per_block(plan.site, routes)

    @staticmethod
    def _per_block(site: str, routes: list[Any]) -> list[tuple[torch.Tensor | None, UnitRoute, UnitRoute]]:
        """Unit-site routes in forward order -> ``(None, heads route, mlp route)`` per block."""
        if site == "heads":
            return [(None, r, None) for r in routes]
        if site == "mlp":
            return [(None, None, r) for r in routes]
        return [(None, a, m) for a, m in zip(routes[0::2], routes[1::2])]

    def _learned_route(self, plan: Any, block: int, h: torch.Tensor, t: torch.Tensor,
                       c: torch.Tensor) -> tuple[torch.Tensor | None, UnitRoute, UnitRoute]:
        """Block ``block``'s learned gates: input ``[N, 1 or T, D]``, or ``[N, units]`` rows at a unit site."""
        site = plan.site
        if site == INPUT_SITE:
            return plan.layer_gate(block, h, t, c), None, None
        if site == "heads_mlp":
            return None, plan.layer_gate(2 * block, h, t, c), plan.layer_gate(2 * block + 1, h, t, c)
        gate = plan.layer_gate(block, h, t, c)
        return (None, gate, None) if site == "heads" else (None, None, gate)

    def train_buckets(self, t: torch.Tensor, dtype: torch.dtype) -> BatchBuckets | None:
        """The timestep buckets of a training forward at timesteps ``t`` ``[N]`` (``train.timestep_buckets``,
        core/buckets.py); None in eval mode or when the plan has none (the masked dense path)."""
        plan = self.plan
        if not self.training or plan is None or plan.buckets is None:
            return None
        return plan.buckets.split(t, dtype)

    def initialize_weights(self) -> None:
        """The official DiT initialisation: xavier linears, zero adaLN and output layers."""
        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.apply(basic_init)

        if not self.pos_embed.is_meta:  # built on the meta device (shape checks of a foreign config), nothing to fill
            table = sincos_2d(self.hidden_size, self.grid_size)  # numpy: a hostile size would allocate here
            self.pos_embed.data.copy_(torch.from_numpy(table).float().unsqueeze(0))
        # The patch embedding is initialised like a linear layer over the flattened patch.
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[N, h*w, p*p*C]`` -> image ``[N, C, h*p, w*p]``."""
        n, p, c, h = x.shape[0], self.patch_size, self.out_channels, self.grid_size
        x = x.reshape(n, h, h, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, h * p, h * p)

    def _labels(self, y: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if y is not None:
            return y
        if self.num_classes == 1:
            return torch.zeros(n, dtype=torch.long, device=device)
        if self.null_class is not None:  # no label given: the unconditional prediction
            return torch.full((n,), self.null_class, dtype=torch.long, device=device)
        raise ValueError(f"this DiT is class-conditional (num_classes={self.num_classes}) without a null class "
                         "(class_dropout_prob=0): pass labels y")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        buckets = self.train_buckets(t, x.dtype)
        if buckets is None:
            routes = self.block_routes(t, x.dtype, x.device)
        else:  # the blocks see the batch sorted by bucket (order), the rest of the model the batch as given
            routes = self._per_block(self.plan.site if self.plan is not None else "", buckets.routes)
        h = self.x_embedder(x) + self.pos_embed                                   # [N, T, D]
        c = self.t_embedder(t) + self.y_embedder(self._labels(y, x.shape[0], x.device), self.training)  # [N, D]
        learned = self.plan if self.plan is not None and self.plan.is_learned and not routes else None
        hb, cb = (h, c) if buckets is None else (h[buckets.order], c[buckets.order])  # learned plans: no buckets
        skip = self.token_skip(hb)  # training with a token router: its tokens skip a span of blocks
        for layer, block in enumerate(self.blocks):
            hb = hb if skip is None else skip.enter(layer, hb)
            mask, heads, mlp = routes[layer] if learned is None else self._learned_route(learned, layer, hb, t, cb)
            hb = run_block(block, self.checkpoint_blocks, hb, cb, mask, heads, mlp)
            hb = hb if skip is None else skip.leave(layer, hb)
            if (sink := self._sink(layer)) is not None:  # a regulariser's tap (REPA), in the batch's order
                sink(hb if buckets is None else hb[buckets.inverse])
        h = hb if buckets is None else hb[buckets.inverse]
        return self.unpatchify(self.final_layer(h, c))                        # [N, out_channels, H, W]


def resolve_dit_params(**params: Any) -> DiTParams:
    """Validate DiT parameters (filling a size preset); a mistake is one ConfigError line naming the key."""
    from dtr_plugins.core.plugins import format_validation_error

    try:
        return DiTParams(**params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, DiTParams, prefix="dit")) from None


@hookimpl
def dtr_register_backbones(register: Callable[..., None]) -> None:
    register("dit", DiT, params=DiTParams,
             description="Diffusion Transformer (DiT, Peebles & Xie) with every block routed; "
                         "official checkpoint layout")


#################################################################################
#                                   DiT Configs                                 #
#################################################################################

def _preset(depth: int, hidden_size: int, num_heads: int, patch_size: int) -> dict[str, int]:
    return {"depth": depth, "hidden_size": hidden_size, "num_heads": num_heads, "patch_size": patch_size}


#: DiT's model table: name -> depth, width, heads, patch.
DIT_SIZES: dict[str, dict[str, int]] = {
    f"{name}/{patch}": _preset(depth, hidden, heads, patch)
    for name, depth, hidden, heads in (("S", 12, 384, 6), ("B", 12, 768, 12), ("L", 24, 1024, 16), ("XL", 28, 1152, 16))
    for patch in (2, 4, 8)
}
