"""Gradient accumulation (``train.grad_accum_steps`` = k): one optimizer step's local batch as k micro-batches,
with the gradients of the single batch.

The local batch (``batch_size / world size`` images, the same images as without accumulation) is split into k
contiguous equal slices. What the single-batch step draws at random is drawn once for the whole local batch, in
the same order: the timesteps (before this function), then the noise (``randn_like(x0)``, the first draw of
``training_losses``), and each micro-batch gets its slice. Draws inside the model's forward (DiT's label
dropout) come from the same generator micro-batch after micro-batch: on CPU they equal the single-batch draws
(uniform numbers are generated sequentially); on CUDA they are fresh draws of the same distribution.

Loss weighting. A weighting maps the per-sample terms ``T`` (``[N]`` each) and the timesteps of the whole batch to
the scalar loss ``f(T)``; every built-in weighting is affine in ``T`` (a weighted mean; ANT-UW's per-cluster means
with counts of the whole batch and its learned log-variances). Micro-batch ``j`` backpropagates
``f(T_j) - (1 - 1/k) f(0)`` with ``T_j`` its own terms in its slice and zeros elsewhere; the k shares sum to
``f(T)`` and their gradients, to the model's and to the weighting's own parameters, to those of ``f(T)``. The
logged loss is that sum: for a plain mean, the mean over micro-batches of each micro-batch's loss.

Under DDP every micro-batch but the last runs in ``no_sync()``, so gradients are all-reduced once per step.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch

__all__ = ["micro_slices", "weighted_share", "forward_backward", "no_sync_of"]


def micro_slices(n: int, k: int) -> list[slice]:
    """``k`` contiguous equal slices of ``range(n)``; raises ValueError when ``k`` does not divide ``n``."""
    if k < 1 or n % k:
        raise ValueError(f"{k} micro-batches cannot split a batch of {n} equally")
    m = n // k
    return [slice(j * m, (j + 1) * m) for j in range(k)]


def _padded(terms: Mapping[str, torch.Tensor], part: slice, n: int) -> dict[str, torch.Tensor]:
    return {key: torch.cat([v.new_zeros(part.start), v, v.new_zeros(n - part.stop)]) for key, v in terms.items()}


def weighted_share(weighting: Callable[..., torch.Tensor], terms: Mapping[str, torch.Tensor], t: torch.Tensor,
                   part: slice, diffusion: Any, k: int) -> torch.Tensor:
    """Micro-batch ``part``'s share of the loss of the whole batch: ``f(T_part) - (1 - 1/k) f(0)``.

    ``terms``: the micro-batch's per-sample terms (``[m]`` each); ``t``: the timesteps of the whole local batch
    ``[N]``. Exact for weightings affine in the terms (all built-in ones, see the module docstring)."""
    n = t.shape[0]
    zeros = {key: v.new_zeros(n) for key, v in terms.items()}
    return weighting(_padded(terms, part, n), t, diffusion) - weighting(zeros, t, diffusion) * (1.0 - 1.0 / k)


def no_sync_of(net: torch.nn.Module) -> Callable[[], AbstractContextManager[Any]]:
    """The ``no_sync`` context of the DDP module in ``net`` (also under ``torch.compile``), else a no-op."""
    inner = net
    if isinstance(inner, torch._dynamo.eval_frame.OptimizedModule):
        inner = inner._orig_mod
    if isinstance(inner, torch.nn.parallel.DistributedDataParallel):
        return inner.no_sync
    return contextlib.nullcontext


def forward_backward(net: torch.nn.Module, diffusion: Any, weighting: Callable[..., torch.Tensor],
                     x0: torch.Tensor, t: torch.Tensor, model_kwargs: Mapping[str, torch.Tensor], *, k: int,
                     autocast: Callable[[], AbstractContextManager[Any]],
                     backward: Callable[[torch.Tensor], None],
                     aux_losses: Callable[[], Mapping[str, torch.Tensor]] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward of one optimizer step's local batch in ``k`` micro-batches (gradients accumulate).

    ``x0``: ``[N, C, H, W]`` denoiser inputs; ``t``: ``[N]`` timesteps; ``model_kwargs``: tensors of ``[N, ...]``
    (labels); ``autocast()``: the precision context of a forward; ``backward(loss)``: e.g. ``scaler.scale(loss)
    .backward()``; ``aux_losses()``: auxiliary losses the model produced in the forward just run (a learned
    routing strategy's), added to what is backpropagated, each micro-batch's divided by ``k``.

    Returns the step's weighted loss (detached scalar, as the single batch would give; auxiliary losses not
    included), the per-sample ``terms["loss"]`` ``[N]`` (detached) and the auxiliary losses (detached, mean over
    micro-batches). ``k = 1`` is the plain single-batch step, bit for bit.
    """
    if k == 1:
        with autocast():
            terms = diffusion.training_losses(net, x0, t, model_kwargs=dict(model_kwargs))
            loss = weighting(terms, t, diffusion)
            aux = dict(aux_losses()) if aux_losses is not None else {}
            total = loss + sum(aux.values()) if aux else loss  # no auxiliary loss: the loss itself, bit for bit
        backward(total)
        return loss.detach(), terms["loss"].detach(), {name: v.detach() for name, v in aux.items()}
    noise = torch.randn_like(x0)  # the single batch's first draw in training_losses
    no_sync = no_sync_of(net)
    parts = micro_slices(x0.shape[0], k)
    loss = torch.zeros((), device=x0.device, dtype=torch.float32)
    per_sample: list[torch.Tensor] = []
    aux_mean: dict[str, torch.Tensor] = {}
    for j, part in enumerate(parts):
        with no_sync() if j < k - 1 else contextlib.nullcontext():
            with autocast():
                kwargs = {key: v[part] for key, v in model_kwargs.items()}
                terms = diffusion.training_losses(net, x0[part], t[part], model_kwargs=kwargs, noise=noise[part])
                share = weighted_share(weighting, terms, t, part, diffusion, k)
                aux = dict(aux_losses()) if aux_losses is not None else {}
                total = share + sum(aux.values()) / k if aux else share
            backward(total)
        loss = loss + share.detach().float()
        per_sample.append(terms["loss"].detach())
        for name, value in aux.items():
            aux_mean[name] = aux_mean.get(name, torch.zeros_like(value)) + value.detach() / k
    return loss, torch.cat(per_sample), aux_mean
