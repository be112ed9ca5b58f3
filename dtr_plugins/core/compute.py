"""Compute settings of a training run that trade speed or memory for nothing in the math: activation
checkpointing per block and TF32 matmuls; each returns a record of what it applied (for ``meta.json``).

- Activation checkpointing (``train.activation_checkpointing``): a backbone that supports it
  (:class:`SupportsActivationCheckpointing`: ``dit``, ``latent_dit``, ``adm_unet``) runs each block through
  :func:`torch.utils.checkpoint.checkpoint` (``use_reentrant=False``, RNG state preserved), keeping only the
  block inputs and recomputing the rest in the backward pass; gradients equal those without it.
- TF32 (``train.tf32``): ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` for the
  run, restored afterwards; only CUDA devices of compute capability 8.0 (Ampere) or newer have TF32.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["SupportsActivationCheckpointing", "apply_activation_checkpointing", "run_block", "tf32_mode"]


@runtime_checkable
class SupportsActivationCheckpointing(Protocol):
    """A backbone that can recompute each block's activations in the backward pass."""

    def set_activation_checkpointing(self, enabled: bool) -> None: ...


def run_block(block: Callable[..., torch.Tensor], enabled: bool, *args: Any) -> torch.Tensor:
    """``block(*args)``, through :func:`torch.utils.checkpoint.checkpoint` (non-reentrant) when ``enabled`` and
    gradients are being recorded; otherwise (sampling, ``torch.no_grad``) a plain call."""
    if enabled and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def apply_activation_checkpointing(model: torch.nn.Module, requested: bool, backbone: str) -> dict[str, Any]:
    """Switch ``model``'s per-block checkpointing to ``requested``; returns ``{"applied": bool[, "why": str]}``.

    A backbone without :class:`SupportsActivationCheckpointing` runs without it (``applied`` False, the reason
    given) rather than failing: the setting saves memory and never changes the result."""
    if isinstance(model, SupportsActivationCheckpointing):
        model.set_activation_checkpointing(requested)
        return {"applied": requested} if requested else {"applied": False, "why": "not requested"}
    if not requested:
        return {"applied": False, "why": "not requested"}
    return {"applied": False, "why": f"backbone {backbone!r} has no per-block activation checkpointing"}


def _tf32_support(device: torch.device) -> str | None:
    """None when ``device`` can run TF32, else why not."""
    if device.type != "cuda":
        return f"device {device.type}: TF32 is a CUDA (Ampere or newer) mode, not applicable"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no TF32 (needs 8.0)"
    return None


@contextlib.contextmanager
def tf32_mode(requested: bool, device: torch.device) -> Iterator[dict[str, Any]]:
    """Within the block, CUDA matmuls and cuDNN convolutions use TF32 iff ``requested`` and ``device`` has it;
    the previous flags come back on exit. Yields the record ``{"applied": bool[, "why": str]}``.

    On CPU / MPS nothing is touched (``applied`` False with the reason, even when requested)."""
    why = _tf32_support(device)
    if why is not None:
        yield {"applied": False, "why": why + (" (requested)" if requested else "")}
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = requested
    torch.backends.cudnn.allow_tf32 = requested
    try:
        yield {"applied": requested} if requested else {"applied": False, "why": "not requested (exact fp32)"}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
