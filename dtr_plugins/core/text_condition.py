"""The packed text condition: what a text-conditioned backbone receives as ``y``.

A conditioner gives token embeddings ``[B, L, D]``, a pooled embedding ``[B, D]`` and an attention mask
``[B, L]``. They travel through the engine as ONE float tensor ``[B, L + 1, D + 1]`` so that everything written
for class labels works on them unchanged: micro-batch slicing (``training/accumulate.py``), DistributedDataParallel,
and classifier-free guidance (``core/diffusion.py`` concatenates ``y`` with the null ``y``, here the empty
caption's packed condition). Layout: rows ``0..L-1`` hold the tokens in channels ``0..D-1`` and the mask (1.0 real,
0.0 padding) in channel ``D``; row ``L`` holds the pooled embedding in channels ``0..D-1`` and 1.0 in channel ``D``.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pack", "unpack"]


def pack(tokens: Tensor, pooled: Tensor, mask: Tensor) -> Tensor:
    """``tokens [B, L, D]``, ``pooled [B, D]``, ``mask [B, L]`` (bool or 0/1) -> ``[B, L + 1, D + 1]`` float32.

    Raises ValueError when the shapes disagree."""
    b, length, dim = tokens.shape
    if tuple(pooled.shape) != (b, dim) or tuple(mask.shape) != (b, length):
        raise ValueError(f"text condition shapes disagree: tokens {tuple(tokens.shape)}, pooled "
                         f"{tuple(pooled.shape)}, mask {tuple(mask.shape)}")
    rows = torch.cat([tokens.float(), pooled.float()[:, None]], dim=1)                  # [B, L + 1, D]
    flags = torch.cat([mask.float(), torch.ones(b, 1, device=mask.device)], dim=1)      # [B, L + 1]
    return torch.cat([rows, flags[..., None].to(rows.device)], dim=2)


def unpack(packed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, L + 1, D + 1]`` -> ``(tokens [B, L, D], pooled [B, D], mask [B, L] bool)``, in ``packed``'s dtype."""
    tokens = packed[:, :-1, :-1]
    pooled = packed[:, -1, :-1]
    mask = packed[:, :-1, -1] > 0.5
    return tokens, pooled, mask
