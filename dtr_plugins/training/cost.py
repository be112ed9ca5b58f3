"""The cost record of a training run (``meta.json`` ``cost``), from one counted step at its start.

The first optimizer step of a run (step 0) runs its forward and backward under
:func:`dtr_plugins.core.cost.counting_flops`: the real batch, the timesteps drawn by the run's sampler, token
routing and accumulation as configured. A compiled network runs that one step eagerly (its uncompiled module;
the same step on a resumed or uninterrupted run). Recorded (docs/comparisons.md, "Cost at equal compute"):

- ``train_flops_per_image``: the step's counted FLOPs on this rank divided by its local batch size (the
  optimizer and EMA updates are elementwise and not counted);
- ``flops_counted``: :data:`~dtr_plugins.core.cost.FLOPS_COUNTED`.

The model's parameters (all and active) are ``meta.json`` ``parameters`` (:mod:`dtr_plugins.core.param_count`).
"""
from __future__ import annotations

from typing import Any

import torch

from dtr_plugins.core.cost import FLOPS_COUNTED

__all__ = ["eager_net", "train_cost_record"]


def eager_net(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` without its ``torch.compile`` wrapper (the module itself when it is not compiled)."""
    from torch._dynamo.eval_frame import OptimizedModule

    return net._orig_mod if isinstance(net, OptimizedModule) else net


def train_cost_record(flops: int, batch: int) -> dict[str, Any]:
    """The ``cost`` record of ``meta.json``: ``flops`` counted over one training step of ``batch`` images."""
    return {"train_flops_per_image": flops / max(batch, 1), "flops_counted": FLOPS_COUNTED}
