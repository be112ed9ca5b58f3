"""``repa``: REPresentation Alignment (Yu et al., "Representation Alignment for Generation: Training Diffusion
Transformers Is Easier Than You Think", ICLR 2025; official code github.com/sihyun-y/REPA).

The hidden tokens ``h`` ``[B, N, D]`` after block ``k`` (``block``, 1-based: the official ``encoder_depth``) of
the denoiser, which sees the noisy input, go through a trainable MLP projector
``Linear(D, P) - SiLU - Linear(P, P) - SiLU - Linear(P, D_enc)`` (``P`` = ``projector_dim``, 2048 in the paper)
to ``z~`` ``[B, N, D_enc]``; a frozen encoder gives the patch features ``z`` ``[B, N, D_enc]`` of the CLEAN image
(:mod:`dtr_plugins.regularizers.encoders`). The loss is the negative cosine similarity averaged over the batch
and the tokens (the paper's Eq. 8 with sim = cosine; the official code normalises both along the feature
dimension and averages ``-<z, z~>`` over tokens, then over encoders and the batch, which for one encoder is this
mean)::

    proj_loss = -mean_{b, n} cos(z[b, n], z~[b, n]);    loss = denoising + weight * proj_loss

``weight`` is the paper's lambda (0.5). The projector's Linear layers start as in SiT's initialisation, which
the official model applies to its projectors too (Xavier-uniform weights, zero biases); it is trained with the
backbone (same AdamW group), saved in checkpoints under ``regularizer`` and never exported.

EMA: the official SiT EMA is a copy of the whole model, projectors included; here the projector is left out of
the EMA. The EMA weights are used only to sample and evaluate, where the projector plays no part, and an EMA
averages each parameter on its own, so the backbone's EMA is the same either way.

Parity: the official repository could not be fetched here (the ``fetch`` tool: "No snapshot of that repository
can be had here"; its ``loss.py`` is not in the code index), so there is no fixture produced by the official code
(and none copied from other repositories); tests/unit/test_repa.py checks the loss against an independent
direct computation with ``torch.nn.functional.cosine_similarity``.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from dtr_plugins.core.contracts import TokenLayout
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.regularizers.encoders import EncoderName, FrozenEncoder, make_encoder

__all__ = ["RepaParams", "Repa", "repa_loss", "build_projector"]

NAME = "repa"


class RepaParams(BaseModel):
    """Parameters of ``repa`` (defaults: the paper's, but the block: its SiT-XL/2 uses 8 of 28)."""

    model_config = ConfigDict(extra="forbid")
    block: int = Field(4, ge=1, description="the block whose output tokens are aligned, 1-based (REPA's "
                                            "encoder_depth; the paper: 8 for SiT-XL/2 of 28 blocks)")
    weight: float = Field(0.5, ge=0, description="lambda: the loss is denoising + weight * proj_loss (paper: 0.5)")
    encoder: EncoderName = Field("dinov2", description="the frozen encoder: dinov2 (transformers Dinov2Model), or "
                                 "the offline digits-classifier / fashion-classifier feature maps")
    encoder_path: str | None = Field(None, description="dinov2: a hub id or a local save_pretrained folder "
                                     "(default facebook/dinov2-base); classifiers: a weights file (default: the "
                                     "cached one, trained offline on first use)")
    projector_dim: int = Field(2048, ge=1, description="hidden width of the MLP projector (paper: 2048)")


def build_projector(width: int, hidden: int, out: int) -> nn.Sequential:
    """REPA's projector ``[.., width] -> [.., out]``: Linear-SiLU-Linear-SiLU-Linear, hidden width ``hidden``;
    Xavier-uniform weights and zero biases (SiT's initialisation of every Linear, projectors included)."""
    net = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                        nn.Linear(hidden, out))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


def repa_loss(z: Tensor, z_tilde: Tensor) -> Tensor:
    """``-mean_{b, n} cos(z[b, n], z~[b, n])`` for ``z``, ``z_tilde`` ``[B, N, D]`` (float32 scalar; REPA's
    projection loss for one encoder). Both are normalised along the feature dimension (``F.normalize``, eps
    1e-12), as the official code does."""
    z = F.normalize(z.float(), dim=-1)
    z_tilde = F.normalize(z_tilde.float(), dim=-1)
    return -(z * z_tilde).sum(dim=-1).mean()


class Repa:
    """The ``repa`` :class:`~dtr_plugins.core.contracts.Regularizer` (see the module docstring).

    Raises ConfigError (one line, ``regularizer.<key>``) for an unknown encoder or missing weights (at
    construction) and for a block out of range (:meth:`bind`)."""

    def __init__(self, block: int = 4, weight: float = 0.5, encoder: str = "dinov2", encoder_path: str | None = None,
                 projector_dim: int = 2048):
        self.block, self.weight, self.projector_dim = int(block), float(weight), int(projector_dim)
        self.encoder: FrozenEncoder = make_encoder(encoder, encoder_path)
        self.projector: nn.Sequential | None = None
        self.grid: tuple[int, int] = (0, 0)
        self._targets: Tensor | None = None

    def __repr__(self) -> str:
        return (f"repa(block={self.block}, weight={self.weight}, encoder={self.encoder.name}, "
                f"projector_dim={self.projector_dim})")

    def bind(self, layout: TokenLayout) -> None:
        """Check the block against ``layout`` and build the projector (global torch generator)."""
        if not 1 <= self.block <= layout.blocks:
            raise ConfigError(f"regularizer.block: {self.block} is out of range for a backbone of {layout.blocks} "
                              f"blocks (allowed: 1 to {layout.blocks}, the block whose output is aligned)")
        if self.block in layout.partial:
            raise ConfigError(f"regularizer.block: block {self.block}'s output holds only the tokens the token router "
                              f"keeps in training (partial blocks: {', '.join(map(str, layout.partial))}); choose a "
                              f"block before token_routing.start or from its end on (1-based: the output of block k)")
        if min(layout.grid) < 1:
            raise ConfigError(f"regularizer: the backbone's token grid {layout.grid} has no tokens to align")
        self.grid = layout.grid
        self.projector = build_projector(layout.width, self.projector_dim, self.encoder.dim)

    def module(self) -> nn.Module:
        if self.projector is None:
            raise RuntimeError("repa: bind(layout) first")
        return self.projector

    def prepare(self, images: Tensor) -> None:
        """The encoder's targets ``[N, gh * gw, dim]`` of the clean ``images`` ``[N, C, H, W]`` in ``[-1, 1]``."""
        self._targets = self.encoder.features(images, self.grid)

    def losses(self, hidden: Tensor, part: slice) -> dict[str, Tensor]:
        """``{"repa": weight * proj_loss}`` of the tokens ``hidden`` ``[m, N, D]`` of the prepared batch's ``part``."""
        if self._targets is None:
            raise RuntimeError("repa: prepare(images) first")
        targets = self._targets[part]
        if hidden.shape[:2] != targets.shape[:2]:
            raise ConfigError(f"regularizer.block: block {self.block} gives {hidden.shape[1]} tokens for "
                              f"{hidden.shape[0]} images; the encoder gives {targets.shape[1]} for {targets.shape[0]}")
        return {NAME: self.weight * repa_loss(targets, self.module()(hidden))}

    def applied(self) -> dict[str, Any]:
        return {"name": NAME, "block": self.block, "weight": self.weight, "projector_dim": self.projector_dim,
                "token_grid": list(self.grid), "encoder": self.encoder.record(), "ema": "excluded",
                "exported": False}


@hookimpl
def dtr_register_regularizers(register: Any) -> None:
    register(NAME, Repa, params=RepaParams,
             description="REPA (Yu et al., ICLR 2025): align a block's tokens, through an MLP projector, with a "
                         "frozen encoder's patch features of the clean image (dinov2, or the offline classifiers)")
