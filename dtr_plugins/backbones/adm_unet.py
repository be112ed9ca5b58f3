# This file is over 500 lines because it is one model family in one file, read beside guided-diffusion's unet.py.
"""``adm_unet``: the ADM U-Net of guided-diffusion (Dhariwal & Nichol, 2021) with task routing.

The architecture and the state-dict layout follow guided-diffusion's ``UNetModel`` exactly
(``time_embed.0/2``, ``label_emb``, ``input_blocks.N.M.*``, ``middle_block.*``, ``output_blocks.N.M.*``,
``out.*``), so released ADM checkpoints load with ``model.load_state_dict``. Parameter names and the
``attention_resolutions`` convention (resolutions such as ``[32, 16, 8]``) follow guided-diffusion's
script flags; defaults follow its ``model_and_diffusion_defaults``.

Routing (docs/design.md, "1. Routing"): every ResBlock is a routed layer, its mask sized to the block's input
channels (in the decoder, after the skip concatenation): ``x_next = skip(x) + F(m * x)``. With
``route_attention`` every attention block is routed too: ``x + Attn(m * x)``. Masks are gathered once
per forward pass and handed to the blocks in forward order.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from torch import nn

from dtr_plugins.core.compute import run_block
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import format_validation_error
from dtr_plugins.core.routing import RoutedBackbone, routed_residual

GROUPS = 32  # GroupNorm groups, as guided-diffusion's normalization()

#: guided-diffusion's channel_mult per image size when none is given (script_util.create_model)
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    64: (1, 2, 3, 4),
    128: (1, 1, 2, 3, 4),
    256: (1, 1, 2, 2, 4, 4),
    512: (0.5, 1, 1, 2, 2, 4, 4),
}


# --------------------------------------------------------------------------------------------------
# geometry helpers (shared by the params validators and the model)
# --------------------------------------------------------------------------------------------------

def level_widths(model_channels: int, channel_mult: Sequence[float]) -> list[int]:
    """Channel width of each U-Net level: ``int(mult * model_channels)``."""
    return [int(m * model_channels) for m in channel_mult]


def level_resolutions(image_size: int, channel_mult: Sequence[float]) -> list[int]:
    """Feature-map side length of each level (the image halves between levels)."""
    return [image_size // 2 ** i for i in range(len(channel_mult))]


def attention_widths(model_channels: int, channel_mult: Sequence[float], image_size: int,
                     attention_resolutions: Sequence[int]) -> tuple[list[int], int]:
    """Widths of the encoder/decoder attention blocks and of the middle block's (always present)."""
    widths = level_widths(model_channels, channel_mult)
    resolutions = level_resolutions(image_size, channel_mult)
    at = sorted({w for w, r in zip(widths, resolutions) if r in set(attention_resolutions)})
    return at, widths[-1]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t * f), sin(t * f)]`` with ``f_i = max_period ** (-i / (dim // 2))``, float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / half * torch.arange(half, dtype=torch.float32, device=t.device))
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zeroed(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (guided-diffusion's zero init of each branch's last layer)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# --------------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------------

class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (bf16/fp16 safe), cast back after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(GROUPS, channels)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (``op``), as guided-diffusion with ``conv_resample=True``."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 convolution (``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _avg_down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def _nearest_up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding; a routed layer.

    ``in_layers`` (norm, SiLU, conv), ``emb_layers`` (SiLU, linear), ``out_layers`` (norm, SiLU, dropout,
    zero-initialised conv) and a 1x1 ``skip_connection`` when the width changes. ``up``/``down`` resample
    inside the block (parameter-free nearest / average pooling on both paths, as ``resblock_updown``).
    Forward: ``skip(x) + F(m * x)``, the plain block when ``mask`` is None.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.resample = _nearest_up if up else _avg_down if down else None
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        zeroed(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if self.out_channels == channels
                                else nn.Conv2d(channels, self.out_channels, 1))
        #: index of this layer in the routing plan's layers (set by the U-Net once built; None: not routed)
        self.route_index: int | None = None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        in_norm, in_act, in_conv = self.in_layers
        h = in_act(in_norm(x if mask is None else x * mask))
        if self.resample is not None:  # resample before the conv on the branch, and the skip input
            h, x = self.resample(h), self.resample(x)
        h = in_conv(h)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, out_act, out_drop, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + e)
        h = out_conv(out_drop(out_act(h)))
        return self.skip_connection(x) + h

    def extra_repr(self) -> str:
        return f"{self.channels} -> {self.out_channels}" + (", resample" if self.resample is not None else "")


class AttentionBlock(nn.Module):
    """Self-attention over spatial positions: ``x + proj_out(attn(qkv(norm(x))))``.

    ``qkv`` is a 1x1 Conv1d to ``3 * C`` channels. Legacy order (``use_new_attention_order=False``) splits
    heads first, then q/k/v (``[H, 3, ch]``); the new order splits q/k/v first (``[3, H, ch]``).
    guided-diffusion scales q and k by ``ch ** -0.25`` each, i.e. logits by ``1 / sqrt(ch)``: the default
    scale of ``F.scaled_dot_product_attention``. Routed (``routed=True``) it computes ``x + Attn(m * x)``.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False, routed: bool = False):
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        if channels % self.num_heads:
            raise ConfigError(f"attention width {channels} is not divisible by {self.num_heads} heads")
        self.use_new_attention_order = use_new_attention_order
        self.routed = routed
        #: index of this layer in the routing plan's layers (set by the U-Net once built; None: not routed)
        self.route_index: int | None = None
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return routed_residual(x, mask, self._attend)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x.reshape(b, c, -1)))
        length, heads = qkv.shape[-1], self.num_heads
        ch = c // heads
        if self.use_new_attention_order:
            q, k, v = qkv.reshape(b, 3, heads, ch, length).unbind(1)
        else:
            q, k, v = qkv.reshape(b, heads, 3, ch, length).unbind(2)
        # [b, heads, ch, length] -> [b, heads, length, ch]; default scale 1/sqrt(ch) as guided-diffusion
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, length)
        return self.proj_out(out).reshape(b, c, *spatial)

    def extra_repr(self) -> str:
        order = "new" if self.use_new_attention_order else "legacy"
        return f"{self.channels}, heads={self.num_heads}, order={order}, routed={self.routed}"


#: ``route(index, block input)`` -> the mask of routed layer ``index`` (None: run the plain layer)
Route = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def _mask(route: Route, index: int | None, x: torch.Tensor) -> torch.Tensor | None:
    return None if index is None else route(index, x)


class TimestepSequential(nn.Sequential):
    """A stage of the U-Net; hands ResBlocks the embedding and each routed layer its mask, which
    ``route(layer.route_index, block input)`` gives (a static row, or a learned gate computed from that input):
    each routed layer carries its index into the plan, so the order of the calls does not matter."""

    checkpoint_layers = False  # train.activation_checkpointing: recompute ResBlocks / attention in the backward

    def forward(self, x: torch.Tensor, emb: torch.Tensor,  # type: ignore[override]
                route: Route) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = run_block(layer, self.checkpoint_layers, x, emb, _mask(route, layer.route_index, x))
            elif isinstance(layer, AttentionBlock):
                x = run_block(layer, self.checkpoint_layers, x, _mask(route, layer.route_index, x))
            else:
                x = layer(x)
        return x


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------

class ADMUNet(RoutedBackbone):
    """guided-diffusion's ``UNetModel`` (2-D, ``conv_resample=True``) as a routed backbone.

    ``attention_resolutions`` are feature-map resolutions (``[32, 16, 8]``), converted to downsample
    factors ``image_size // res`` like guided-diffusion's scripts. ``num_classes`` None or 0: unconditional.
    ``learn_sigma`` doubles the output channels. ``channels_last`` stores convolution weights and
    activations in NHWC. Invalid geometry raises :class:`ConfigError` (one line naming the key).
    """

    def __init__(self, **params: Any):
        """``params``: the fields of :class:`ADMParams` (their defaults live there)."""
        super().__init__()
        try:
            p = ADMParams.model_validate(params)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, ADMParams, prefix="adm_unet")) from None
        self.config = p.model_dump(exclude={"preset"})
        self.preset: str | None = p.preset
        self.image_size = p.image_size
        self.input_size = p.image_size  # the Backbone contract's name for the side of x
        self.in_channels = p.in_channels
        self.out_channels = 2 * p.in_channels if p.learn_sigma else p.in_channels
        self.learn_sigma = p.learn_sigma
        self.model_channels = p.model_channels
        self.num_classes = p.num_classes
        # guided-diffusion's label table has no extra row, so classifier-free guidance has no null label.
        self.null_class: int | None = None
        self.channels_last = p.channels_last
        self.route_attention = p.route_attention

        emb_dim = 4 * p.model_channels
        self.time_embed = nn.Sequential(nn.Linear(p.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if p.num_classes is not None:
            self.label_emb = nn.Embedding(p.num_classes, emb_dim)

        widths = level_widths(p.model_channels, cast("tuple[float, ...]", p.channel_mult))  # filled by the validator
        attn_ds = {p.image_size // r for r in p.attention_resolutions}
        heads_up = p.num_heads if p.num_heads_upsample == -1 else p.num_heads_upsample

        def res(cin: int, cout: int | None = None, **updown: bool) -> ResBlock:
            return ResBlock(cin, emb_dim, p.dropout, cout, p.use_scale_shift_norm, **updown)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, p.num_head_channels, p.use_new_attention_order, p.route_attention)

        ch = widths[0]
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(p.in_channels, ch, 3, padding=1))])
        skip_widths = [ch]
        ds = 1
        for level, width in enumerate(widths):
            for _ in range(p.num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if ds in attn_ds:
                    layers.append(attn(ch, p.num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_widths.append(ch)
            if level != len(widths) - 1:
                down = res(ch, ch, down=True) if p.resblock_updown else Downsample(ch)
                self.input_blocks.append(TimestepSequential(down))
                skip_widths.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(res(ch), attn(ch, p.num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(p.num_res_blocks + 1):
                layers = [res(ch + skip_widths.pop(), width)]
                ch = width
                if ds in attn_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == p.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if p.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zeroed(nn.Conv2d(widths[0], self.out_channels, 3, padding=1)))

        # ResBlock and AttentionBlock both store their width as an int `channels`; each routed layer is told
        # its index into the plan here, once (forward hands layer i row i whatever order it runs them in)
        routed = self._routed_layers()
        for index, layer in enumerate(routed):
            layer.route_index = index
        self._routed_channels = [layer.channels for layer in routed]
        if p.channels_last:
            self.to(memory_format=torch.channels_last)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Run every ResBlock and attention block through activation checkpointing (``core/compute.py``)."""
        for stage in self._stages():
            stage.checkpoint_layers = bool(enabled)

    def _stages(self) -> list[TimestepSequential]:
        return [*self.input_blocks, self.middle_block, *self.output_blocks]

    def _routed_layers(self) -> list[ResBlock | AttentionBlock]:
        """ResBlocks (and routed attention blocks) in forward order."""
        return [layer for stage in self._stages() for layer in stage
                if isinstance(layer, ResBlock) or (isinstance(layer, AttentionBlock) and layer.routed)]

    learned_gates = True  # learned strategies gate each routed layer's input [N, C, H, W]; cond: emb
    expert_blocks = ("input_blocks.", "middle_block.", "output_blocks.")  # time experts, granularity block

    def routing_cond_dim(self) -> int | None:
        return cast(nn.Linear, self.time_embed[2]).out_features  # emb = time_embed(t) (+ label_emb(y))

    def routed_channels(self, site: str = "input") -> list[int]:
        """Input width of every routed layer in forward order (decoder ResBlocks: after the concatenation).
        ``input`` is this backbone's only routing site; another raises ConfigError."""
        self.check_site(site)
        return list(self._routed_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[N, in_channels, H, W]``; ``t``: ``[N]`` timestep indices; ``y``: ``[N]`` labels
        (required when class-conditional, ignored otherwise). Returns ``[N, out_channels, H, W]``."""
        # flow: a continuous process routes by the float time itself; index plans take integer timesteps
        task = t if self.plan is not None and self.plan.continuous is not None else t.long()
        emb_dtype = cast(nn.Linear, self.time_embed[0]).weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(emb_dtype))
        if self.num_classes is not None:
            if y is None:
                raise ValueError("this ADM U-Net is class-conditional: pass labels y")
            emb = emb + self.label_emb(y)
        route = self._router(task, x.dtype, emb)
        h = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        skips = []
        for stage in self.input_blocks:
            h = stage(h, emb, route)
            skips.append(h)
        h = self.middle_block(h, emb, route)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, route)
        return self.out(h)

    def _router(self, task: torch.Tensor, dtype: torch.dtype, emb: torch.Tensor) -> Route:
        """``route(index, block input)`` -> routed layer ``index``'s mask ``[N, C, 1, 1]`` (None: plain); under a
        learned plan the gate its strategy computes from that input (``[N, C, 1, 1]`` or ``[N, C, H, W]``)."""
        plan = self.plan
        if plan is not None and plan.is_learned:
            return lambda index, h: plan.layer_gate(index, h, task, emb)
        masks = [None if m is None else m[:, :, None, None] for m in self.layer_masks(task, dtype)]
        return lambda index, h: masks[index]


# --------------------------------------------------------------------------------------------------
# parameters, presets, registration
# --------------------------------------------------------------------------------------------------

def _divisors_note(widths: Sequence[int]) -> str:
    if len(widths) == 1:
        return f"a divisor of {widths[0]}, the attention width"
    g = 0
    for w in widths:
        g = math.gcd(g, w)
    return f"a divisor of {g}, the gcd of the attention widths {', '.join(map(str, widths))}"


class ADMParams(BaseModel):
    """Parameters of ``adm_unet``; names and meaning as guided-diffusion's (``num_channels`` is
    ``model_channels``). A ``preset`` fills every key not given explicitly. Field order matters: each
    validator checks its key against the keys declared before it."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["adm-64", "adm-128", "adm-256", "small"] | None = Field(
        None, description="a named configuration; explicit keys override it")
    in_channels: int = Field(3, ge=1)
    channel_mult: tuple[int | float, ...] | None = Field(
        None, validate_default=True, description="width multiplier per level; default from image_size (64/128/256/512)")
    model_channels: int = Field(128, ge=1, description="base width (guided-diffusion's num_channels)")
    image_size: int = Field(64, ge=1)
    num_res_blocks: int = Field(2, ge=1)
    attention_resolutions: tuple[int, ...] = Field(
        (16, 8), description="feature-map resolutions with self-attention, e.g. [32, 16, 8]")
    num_head_channels: int = Field(-1, description="channels per head (-1: use num_heads)")
    num_heads: int = Field(4, ge=1)
    num_heads_upsample: int = Field(-1, description="heads in the decoder with num_heads (-1: num_heads)")
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)
    num_classes: int | None = Field(None, ge=0, description="None or 0: unconditional")
    learn_sigma: bool = True
    route_attention: bool = Field(False, description="route attention blocks as well as ResBlocks")
    channels_last: bool = False

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            data = {**PRESETS[data["preset"]], **data}
        if isinstance(data, dict) and data.get("channel_mult") is None:
            size = data.get("image_size", cls.model_fields["image_size"].default)
            if isinstance(size, int) and size in DEFAULT_CHANNEL_MULT:
                data = {**data, "channel_mult": DEFAULT_CHANNEL_MULT[size]}
        return data

    @field_validator("attention_resolutions", mode="before")
    @classmethod
    def _split_flag(cls, value: Any) -> Any:
        if isinstance(value, str):  # guided-diffusion's flag form "32,16,8"
            return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
        if isinstance(value, int):
            return (value,)
        return value

    @field_validator("channel_mult")
    @classmethod
    def _check_mult(cls, value: tuple[float, ...] | None) -> tuple[float, ...]:
        if value is None:
            raise ValueError("required for this image_size (defaults exist for 64, 128, 256, 512), e.g. [1, 2, 2]")
        if not value or any(m <= 0 for m in value):
            raise ValueError("must be a non-empty list of positive multipliers, e.g. [1, 2, 2]")
        return value

    @field_validator("model_channels")
    @classmethod
    def _check_groups(cls, value: int, info: ValidationInfo) -> int:
        mult = info.data.get("channel_mult")
        if mult:
            widths = level_widths(value, mult)
            if any(w % GROUPS for w in widths):
                raise ValueError(f"level widths model_channels x channel_mult = {', '.join(map(str, widths))} must all "
                                 f"be multiples of {GROUPS} (GroupNorm's groups); allowed: e.g. a multiple of {GROUPS}")
        return value

    @field_validator("image_size")
    @classmethod
    def _check_size(cls, value: int, info: ValidationInfo) -> int:
        mult = info.data.get("channel_mult")
        if mult:
            factor = 2 ** (len(mult) - 1)
            if value % factor:
                raise ValueError(f"not divisible by {factor}, the total downsampling of {len(mult)} levels "
                                 f"(channel_mult {list(mult)}); allowed: multiples of {factor}")
        return value

    @field_validator("attention_resolutions")
    @classmethod
    def _check_attention(cls, value: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        mult, size = info.data.get("channel_mult"), info.data.get("image_size")
        if mult and size:
            reached = level_resolutions(size, mult)
            missing = [r for r in value if r not in reached]
            if missing:
                raise ValueError(f"resolution {missing[0]} is never reached; allowed: "
                                 f"{', '.join(map(str, reached))} (image_size {size} over {len(mult)} levels)")
        return value

    @classmethod
    def _attention_widths(cls, info: ValidationInfo) -> list[int] | None:
        d = info.data
        if (not all(d.get(k) for k in ("channel_mult", "model_channels", "image_size"))
                or "attention_resolutions" not in d):
            return None
        at, middle = attention_widths(d["model_channels"], d["channel_mult"], d["image_size"],
                                      d["attention_resolutions"])
        return sorted({*at, middle})

    @field_validator("num_head_channels")
    @classmethod
    def _check_head_channels(cls, value: int, info: ValidationInfo) -> int:
        if value == -1:
            return value
        if value < 1:
            raise ValueError("must be -1 (use num_heads) or a positive channel count")
        widths = cls._attention_widths(info)
        if widths and any(w % value for w in widths):
            bad = next(w for w in widths if w % value)
            raise ValueError(f"does not divide the attention width {bad}; allowed: -1 or {_divisors_note(widths)}")
        return value

    @field_validator("num_heads")
    @classmethod
    def _check_heads(cls, value: int, info: ValidationInfo) -> int:
        widths = cls._attention_widths(info)
        if info.data.get("num_head_channels") == -1 and widths and any(w % value for w in widths):
            bad = next(w for w in widths if w % value)
            raise ValueError(f"does not divide the attention width {bad}; allowed: {_divisors_note(widths)}")
        return value

    @field_validator("num_heads_upsample")
    @classmethod
    def _check_heads_up(cls, value: int, info: ValidationInfo) -> int:
        if value == -1:
            return value
        if value < 1:
            raise ValueError("must be -1 (same as num_heads) or a positive head count")
        d = info.data
        if d.get("num_head_channels") == -1 and all(d.get(k) for k in ("channel_mult", "model_channels", "image_size")):
            widths, _ = attention_widths(d["model_channels"], d["channel_mult"], d["image_size"],
                                         d.get("attention_resolutions", ()))
            if widths and any(w % value for w in widths):
                bad = next(w for w in widths if w % value)
                raise ValueError(f"does not divide the decoder attention width {bad}; "
                                 f"allowed: -1 or {_divisors_note(widths)}")
        return value

    @field_validator("num_classes")
    @classmethod
    def _unconditional(cls, value: int | None) -> int | None:
        return value or None


def build_adm_unet(**params: Any) -> ADMUNet:
    """Build an :class:`ADMUNet` from ``adm_unet`` parameters (``preset`` plus overrides)."""
    try:
        p = ADMParams.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, ADMParams, prefix="adm_unet")) from None
    model = ADMUNet(**p.model_dump(exclude={"preset"}))
    model.preset = p.preset
    return model


@hookimpl
def dtr_register_backbones(register):
    register("adm_unet", build_adm_unet, params=ADMParams,
             description="guided-diffusion's ADM U-Net; routes every ResBlock (optionally attention)")


#: Named configurations. adm-64/128/256: guided-diffusion's released ImageNet models (README flags).
#: small: an 8x8 digits-sized network for tests and the CPU quickstart.
PRESETS: dict[str, dict[str, Any]] = {
    "adm-64": dict(image_size=64, in_channels=3, model_channels=192, num_res_blocks=3, channel_mult=(1, 2, 3, 4),
                   attention_resolutions=(32, 16, 8), num_heads=4, num_head_channels=64, num_heads_upsample=-1,
                   use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True, dropout=0.1,
                   num_classes=1000, learn_sigma=True),
    "adm-128": dict(image_size=128, in_channels=3, model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 3, 4),
                    attention_resolutions=(32, 16, 8), num_heads=4, num_head_channels=-1, num_heads_upsample=-1,
                    use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False, dropout=0.0,
                    num_classes=1000, learn_sigma=True),
    "adm-256": dict(image_size=256, in_channels=3, model_channels=256, num_res_blocks=2,
                    channel_mult=(1, 1, 2, 2, 4, 4), attention_resolutions=(32, 16, 8), num_heads=4,
                    num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
                    use_new_attention_order=False, dropout=0.0, num_classes=1000, learn_sigma=True),
    "small": dict(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                  attention_resolutions=(4,), num_heads=4, num_head_channels=32, num_heads_upsample=-1,
                  use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True, dropout=0.0,
                  num_classes=10, learn_sigma=True),
}
