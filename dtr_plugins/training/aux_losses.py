"""The auxiliary losses of one training step: a learned routing strategy's and the regulariser's (REPA).

:func:`step_aux_losses` hands :func:`~dtr_plugins.training.accumulate.forward_backward` the callable it calls after
each micro-batch's forward. With a regulariser, the clean images of the step are encoded once before the forward
(``prepare``), the backbone's tap (:class:`~dtr_plugins.core.contracts.SupportsBlockTokens`) hands over the tokens of
the regulariser's block in each forward, and micro-batch ``j`` (contiguous slices, in order) is scored against its
slice of the targets. The tap is removed when the step ends, so evaluation and EMA copies never carry it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import cast

import torch

from dtr_plugins.core.contracts import Regularizer, SupportsBlockTokens
from dtr_plugins.core.routing import RoutingPlan

__all__ = ["step_aux_losses"]

AuxLosses = Callable[[], Mapping[str, torch.Tensor]]


@contextlib.contextmanager
def step_aux_losses(model: torch.nn.Module, plan: RoutingPlan | None, regularizer: Regularizer | None,
                    images: torch.Tensor) -> Iterator[AuxLosses | None]:
    """The step's auxiliary losses (None: there are none, the loss is backpropagated alone).

    ``model``: the backbone (not a DDP wrapper); ``images``: the step's local batch of clean images ``[N, C, H, W]``
    in ``[-1, 1]``, before the codec. Each call returns the routing plan's losses and ``regularizer.losses`` of
    the tokens tapped in the forward just run (``RuntimeError`` when the forward gave none)."""
    if regularizer is None:
        yield plan.pop_aux_losses if plan is not None else None
        return
    regularizer.prepare(images)
    tapped: list[torch.Tensor] = []
    done = 0  # images of the step already scored: micro-batches come in order

    def losses() -> dict[str, torch.Tensor]:
        nonlocal done
        if not tapped:
            raise RuntimeError(f"the backbone gave no tokens of block {regularizer.block} in this forward")
        hidden = tapped[0]
        tapped.clear()
        out = dict(plan.pop_aux_losses()) if plan is not None else {}
        out.update(regularizer.losses(hidden, slice(done, done + hidden.shape[0])))
        done += hidden.shape[0]
        return out

    backbone = cast(SupportsBlockTokens, model)
    backbone.tap_block(regularizer.block, tapped.append)
    try:
        yield losses
    finally:
        backbone.tap_block(regularizer.block, None)
