"""FLOPs counted while code runs: what training and sampling a model cost in floating-point operations.

FLOPs are counted, never estimated by hand: :func:`counting_flops` runs code under
:class:`torch.utils.flop_counter.FlopCounterMode`, which counts the floating-point operations of the ops it has a
formula for, as torch writes them (``torch/utils/flop_counter.py``): matrix products (``mm``, ``addmm``, ``bmm``,
``baddbmm``: 2 FLOPs per multiply-add), convolutions and their backward passes, and scaled dot-product attention
(forward and backward; torch has no formula for the CPU flash kernel ``_scaled_dot_product_flash_attention_for_cpu``,
so it is counted here with torch's own attention formulas, the same numbers a GPU kernel gets). Not counted:
elementwise ops, normalisations, activations, softmax outside attention, embeddings' lookups, the optimizer and
the EMA. What is counted is what really ran: a sliced (sampling) path counts its narrower matmuls, classifier-free
guidance its doubled batch, token routing its dropped tokens, activation checkpointing its recomputed forward.

Parameters (all, and those one forward uses) are :func:`dtr_plugins.core.param_count.parameter_counts`.

docs/comparisons.md ("Cost at equal compute") says where these numbers are recorded and reported.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["FLOPS_COUNTED", "FlopCount", "counting_flops"]

#: what the recorded FLOPs are, written beside them (meta.json ``cost``, samples.json)
FLOPS_COUNTED = ("torch.utils.flop_counter.FlopCounterMode: matmuls, convolutions and scaled dot-product attention "
                 "(2 FLOPs per multiply-add); elementwise ops not counted")


def _sdpa_cpu(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
              **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(query_shape, key_shape, value_shape))  # type: ignore[no-untyped-call]


def _sdpa_cpu_backward(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                       out_shape: Any = None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    flops = sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)  # type: ignore[no-untyped-call]
    return int(flops)


class FlopCount:
    """The FLOPs counted inside one :func:`counting_flops` block (``total``: an int, read after the block)."""

    def __init__(self) -> None:
        self.total = 0


@contextlib.contextmanager
def counting_flops() -> Iterator[FlopCount]:
    """Count the FLOPs of the code run inside the block (module docstring: what is counted); the result is in
    the yielded :class:`FlopCount`'s ``total`` once the block ends. Changes no numbers and no RNG state."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward}
    count = FlopCount()
    mode = FlopCounterMode(display=False, custom_mapping=mapping)
    with mode:
        yield count
    count.total = int(mode.get_total_flops())
