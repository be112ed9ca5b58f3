"""``dit_t2i``: a text-conditioned DiT (the MS-COCO text-to-image model of docs/text_to_image.md), every block routed.

The blocks, patch and timestep embeddings, final layer and routing sites are :mod:`dtr_plugins.backbones.dit`'s.
``y`` is the packed text condition of :mod:`dtr_plugins.core.text_condition` (tokens ``[N, L, D_text]``, mask,
pooled ``[N, D_text]``). The tokens go through a caption projection (``Linear -> GELU(tanh) -> Linear`` to
``hidden_size``, as PixArt-alpha's caption embedder); two ways of reading them (``text_mode``):

- ``cross_attention`` (PixArt-alpha, Chen et al. 2023, arXiv 2310.00426): each block runs self-attention, then
  multi-head cross-attention from the image tokens to the projected text tokens (padding masked out; output
  projection zero-initialised), then the MLP. adaLN-Zero modulation comes from the timestep embedding plus a
  linear projection of the pooled text embedding (``pooled: false``: the timestep alone, as PixArt).
- ``in_context`` (U-ViT, Bao et al. 2023, arXiv 2209.12152): the projected text tokens, with a learned position
  embedding, are put in front of the image tokens and every block self-attends over both (no padding mask, as
  U-ViT); the final layer reads the image tokens only.

Routing is unchanged (the masks depend on the timestep only): a routed block computes ``x + F(m * x)`` with ``F``
the whole block update (self-attention, cross-attention and MLP; in ``in_context`` mode the mask covers the text
tokens too); ``routed_channels(site)`` and the sites are ``dit``'s (heads: the self-attention heads; the
cross-attention is not routed). Checkpoints, EMA, resume and sampling are ``dit``'s; no foreign (diffusers) layout.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from dtr_plugins.backbones.dit import (
    DiT,
    DiTBlock,
    DiTParams,
    FinalLayer,
    PatchEmbed,
    TimestepEmbedder,
    UnitRoute,
    modulate,
    resolve_dit_params,
    sincos_2d,
)
from dtr_plugins.backbones.latent_dit import LatentDiTParams
from dtr_plugins.core.compute import run_block
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.routing import RoutedBackbone, routed_residual
from dtr_plugins.core.text_condition import unpack

__all__ = ["DiTT2I", "DiTT2IParams", "LatentDiTT2I", "LatentDiTT2IParams", "CrossAttention", "TextDiTBlock"]

TextMode = Literal["cross_attention", "in_context"]


class DiTT2IParams(DiTParams):
    """Parameters of ``dit_t2i``: ``dit``'s (a ``size`` preset, ...) without class labels, plus the text fields."""

    num_classes: int = Field(1, ge=1, le=1, description="text-conditioned: no class labels (always 1)")
    class_dropout_prob: float = Field(0.0, ge=0, le=0, description="unused: caption dropout is text.caption_dropout")
    text_dim: int = Field(768, ge=1, description="width of the conditioner's embeddings (CLIP ViT-L/14: 768)")
    text_length: int = Field(77, ge=1, description="tokens per text (the conditioner's max_length; U-ViT: 77)")
    text_mode: TextMode = Field("cross_attention", description="cross_attention (PixArt-alpha) or in_context "
                                "(U-ViT: text tokens in the sequence)")
    pooled: bool = Field(True, description="add a projection of the pooled text embedding to adaLN's condition")


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens ``x`` ``[N, T, D]`` to text tokens ``[N, L, D]`` (``mask`` ``[N, L]``
    bool: True = attend; every row has one True)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q(x).view(n, tokens, heads, head_dim).transpose(1, 2)                      # [N, H, T, hd]
        k, v = self.kv(text).view(n, text.shape[1], 2, heads, head_dim).permute(2, 0, 3, 1, 4)  # [N, H, L, hd]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class TextDiTBlock(DiTBlock):
    """``dit``'s block with cross-attention to the text between self-attention and the MLP (PixArt-alpha)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__(hidden_size, num_heads, mlp_ratio)
        self.cross_attn = CrossAttention(hidden_size, num_heads)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None,
                heads: UnitRoute = None, mlp: UnitRoute = None, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[N, T, D]``, ``c`` ``[N, D]``, routes as :meth:`DiTBlock.forward`; ``text`` ``[N, L, D]`` and
        ``text_mask`` ``[N, L]`` (required)."""
        assert text is not None and text_mask is not None
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)

        def branch(u: torch.Tensor) -> torch.Tensor:
            a = gate_msa * self.attn(modulate(self.norm1(u), shift_msa, scale_msa), heads)
            cross = self.cross_attn(u + a, text, text_mask)
            return a + cross + gate_mlp * self.mlp(modulate(self.norm2(u + a + cross), shift_mlp, scale_mlp), mlp)

        return routed_residual(x, mask, branch)


class DiTT2I(DiT):
    """``model(x, t, y)`` with ``y`` the packed text condition ``[N, text_length + 1, text_dim + 1]``; returns
    ``[N, out_channels, input_size, input_size]``. See the module docstring."""

    def __init__(self, input_size: int = 32, patch_size: int | None = None, in_channels: int = 4,
                 hidden_size: int | None = None, depth: int | None = None, num_heads: int | None = None,
                 mlp_ratio: float = 4.0, class_dropout_prob: float = 0.0, num_classes: int = 1,
                 learn_sigma: bool = True, size: str | None = None, text_dim: int = 768, text_length: int = 77,
                 text_mode: TextMode = "cross_attention", pooled: bool = True):
        RoutedBackbone.__init__(self)  # dit's attributes are set here; its label embedder is not built
        p = resolve_dit_params(size=size, input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                               hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                               learn_sigma=learn_sigma)
        if text_mode not in ("cross_attention", "in_context"):
            raise ConfigError(f"backbone.text_mode: {text_mode!r} (allowed: cross_attention, in_context)")
        self.size, self.input_size, self.patch_size = p.size, p.input_size, p.patch_size
        self.in_channels, self.hidden_size, self.depth = p.in_channels, p.hidden_size, p.depth
        self.num_heads, self.learn_sigma = p.num_heads, p.learn_sigma
        assert p.hidden_size is not None and p.depth is not None and p.num_heads is not None and p.patch_size
        self.out_channels = p.in_channels * 2 if p.learn_sigma else p.in_channels
        self.num_classes, self.class_dropout_prob = 1, 0.0
        self.text_dim, self.text_length, self.text_mode, self.pooled = text_dim, text_length, text_mode, pooled
        self.x_embedder = PatchEmbed(p.patch_size, p.in_channels, p.hidden_size)
        self.t_embedder = TimestepEmbedder(p.hidden_size)
        self.text_embedder = nn.Sequential(nn.Linear(text_dim, p.hidden_size), nn.GELU(approximate="tanh"),
                                           nn.Linear(p.hidden_size, p.hidden_size))
        self.pooled_embedder = nn.Linear(text_dim, p.hidden_size) if pooled else None
        self.grid_size = p.input_size // p.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size ** 2, p.hidden_size), requires_grad=False)
        in_context = text_mode == "in_context"
        self.text_pos_embed = nn.Parameter(torch.zeros(1, text_length, p.hidden_size)) if in_context else None
        block = DiTBlock if in_context else TextDiTBlock
        self.blocks = nn.ModuleList([block(p.hidden_size, p.num_heads, p.mlp_ratio) for _ in range(p.depth)])
        self.final_layer = FinalLayer(p.hidden_size, p.patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def null_class(self) -> int | None:
        """None: guidance uses the empty caption's condition as the null ``y`` (``SupportsTextConditioning``)."""
        return None

    def initialize_weights(self) -> None:
        """dit's initialisation (xavier linears, zero adaLN and output layers, fixed sin-cos positions); the
        caption projection xavier, the cross-attention output projection zero (PixArt-alpha), the in-context
        text position embedding normal(0, 0.02) (U-ViT)."""
        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.apply(basic_init)
        if not self.pos_embed.is_meta:
            table = sincos_2d(int(self.hidden_size or 0), self.grid_size)
            self.pos_embed.data.copy_(torch.from_numpy(table).float()[None])
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for index in (0, 2):
            nn.init.normal_(cast(nn.Linear, self.t_embedder.mlp[index]).weight, std=0.02)
        if self.text_pos_embed is not None:
            nn.init.normal_(self.text_pos_embed, std=0.02)
        zeroed: list[nn.Linear] = [cast(nn.Linear, self.final_layer.adaLN_modulation[-1]), self.final_layer.linear]
        for block in cast(list[DiTBlock], list(self.blocks)):
            zeroed.append(cast(nn.Linear, block.adaLN_modulation[-1]))
            if isinstance(block, TextDiTBlock):
                zeroed.append(block.cross_attn.proj)
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def token_layout(self) -> tuple[int, int]:
        """``(blocks, tokens)``: in context the text tokens run the blocks (and may skip a span) too."""
        text = self.text_length if self.text_pos_embed is not None else 0
        return len(self.blocks), self.grid_size ** 2 + text

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("dit_t2i is text-conditioned: pass y, the packed text condition "
                             "(dtr_plugins.core.text_condition.pack); the empty caption's is the unconditional one")
        expected = (self.text_length + 1, self.text_dim + 1)
        if tuple(y.shape[1:]) != expected:
            raise ConfigError(f"backbone.text_dim: the text condition is {list(y.shape[1:])} per sample, this model "
                              f"takes {list(expected)} (text_length + 1, text_dim + 1): set backbone.text_dim and "
                              f"text_length to the conditioner's embed_dim and max_length")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        tokens, pooled, text_mask = unpack(y.to(x.dtype))
        routes = self.block_routes(t, x.dtype, x.device)
        h = self.x_embedder(x) + self.pos_embed                                       # [N, T, D]
        c = self.t_embedder(t)                                                        # [N, D]
        if self.pooled_embedder is not None:
            c = c + self.pooled_embedder(pooled)
        text = self.text_embedder(tokens)                                             # [N, L, D]
        extra: tuple[torch.Tensor, ...] = (text, text_mask)
        if self.text_pos_embed is not None:  # in context: [text tokens, image tokens] through plain dit blocks
            h, extra = torch.cat([text + self.text_pos_embed, h], dim=1), ()
        learned = self.plan if self.plan is not None and self.plan.is_learned else None
        skip = self.token_skip(h)  # training with a token router (in context: text tokens are tokens too)
        for layer, (block, (mask, heads, mlp)) in enumerate(zip(self.blocks, routes)):
            h = h if skip is None else skip.enter(layer, h)
            gate = mask if learned is None else learned.layer_gate(layer, h, t, c)
            h = run_block(block, self.checkpoint_blocks, h, c, gate, heads, mlp, *extra)
            h = h if skip is None else skip.leave(layer, h)
            if (sink := self._sink(layer)) is not None:  # a regulariser's tap: the image tokens (last in context)
                sink(h[:, -self.grid_size ** 2:])
        if self.text_pos_embed is not None:
            h = h[:, self.text_length:]
        return self.unpatchify(self.final_layer(h, c))


class LatentDiTT2IParams(DiTT2IParams):
    """``dit_t2i``'s parameters with ``input_size`` and ``in_channels`` from the codec's latents (``latent_dit``)."""

    input_size: int | None = LatentDiTParams.model_fields["input_size"]  # type: ignore[assignment]
    in_channels: int | None = LatentDiTParams.model_fields["in_channels"]  # type: ignore[assignment]

    @field_validator("input_size")
    @classmethod
    def _divisible_by_patch(cls, value: int | None, info: ValidationInfo) -> int | None:  # type: ignore[override]
        return None if value is None else LatentDiTParams._divisible_by_patch(value, info)


class LatentDiTT2I(DiTT2I):
    """``dit_t2i`` on a codec's normalised latents (the SD VAE of the MS-COCO setup); see ``latent_dit``."""

    input_space: ClassVar[Literal["pixels", "latents"]] = "latents"

    def __init__(self, *, input_size: int | None = None, in_channels: int | None = None, **params: Any):
        if input_size is None or in_channels is None:
            raise ConfigError("backbone: latent_dit_t2i takes input_size and in_channels from the codec; build it "
                              "with dtr_plugins.build_model(cfg) (a config with a vae or codec section)")
        super().__init__(input_size=input_size, in_channels=in_channels, **params)


@hookimpl
def dtr_register_backbones(register: Callable[..., None]) -> None:
    register("dit_t2i", DiTT2I, params=DiTT2IParams,
             description="text-conditioned DiT (cross-attention as PixArt-alpha, or U-ViT's in-context tokens) "
                         "with every block routed")
    register("latent_dit_t2i", LatentDiTT2I, params=LatentDiTT2IParams,
             description="text-conditioned DiT on the latents of a codec (vae section); every block routed")
