"""Running a backbone whose weights are split into time experts
(:class:`~dtr_plugins.core.contracts.TimeExpertRouting`).

Each sample of a batch is denoised by the expert that owns its noise level: the batch is split by expert, each part
runs the backbone's ordinary forward with that expert's weights swapped in (``torch.func.functional_call``, so the
gradients reach the expert's own parameters), and the outputs are put back in the batch's order. A batch whose
samples all belong to one expert (every sampling call: one shared time) runs in one piece, without a copy.

Expert 0 is the backbone's own weights; the others are the strategy's copies (``routing.learned.*`` in the state
dict). Only tensors whose first dimension is the batch size are split (``x``, ``t``, labels, a text condition);
other arguments are handed to every part unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dtr_plugins.core.contracts import TimeExpertRouting


def _take(value: Any, index: Tensor, batch: int) -> Any:
    """Rows ``index`` of a batch tensor (first dimension ``batch``); anything else unchanged."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value.index_select(0, index.to(value.device))
    return value


def split_by_expert(model: nn.Module, experts: TimeExpertRouting, tasks_of: Callable[[Tensor], Tensor],
                    args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Tensor:
    """``model(*args, **kwargs)`` with each sample run by its expert; ``args[0]`` is ``x`` ``[N, ...]`` and
    ``args[1]`` the model's times ``t`` (``[N]`` or a scalar); ``tasks_of`` maps ``t`` to the strategy's tasks
    (int64 timesteps, or float noise levels). The caller guards against re-entry (``model`` is called again here).
    Returns the output ``[N, ...]`` in the batch's order. ``ValueError`` without positional ``x`` and ``t``."""
    if len(args) < 2:
        raise ValueError("a backbone with time experts is called as model(x, t, ...)")
    x, t = args[0], args[1]
    batch = int(x.shape[0])
    if t.ndim == 0:
        t = t.expand(batch)
        args = (x, t, *args[2:])
    owner = experts.expert_of(tasks_of(t)).to(x.device)
    present = sorted(set(owner.tolist()))  # one host sync per forward
    if len(present) == 1:
        return _run(model, experts, present[0], args, kwargs)
    parts, rows = [], []
    for expert in present:
        index = torch.nonzero(owner == expert).squeeze(1)
        parts.append(_run(model, experts, expert, tuple(_take(a, index, batch) for a in args),
                          {k: _take(v, index, batch) for k, v in kwargs.items()}))
        rows.append(index)
    order = torch.cat(rows)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(batch, device=order.device)
    return torch.cat(parts).index_select(0, inverse)


def _run(model: nn.Module, experts: TimeExpertRouting, expert: int, args: tuple[Any, ...],
         kwargs: Mapping[str, Any]) -> Tensor:
    weights = experts.expert_weights(expert)
    if not weights:
        out: Tensor = model(*args, **kwargs)
        return out
    result: Tensor = torch.func.functional_call(model, weights, args, dict(kwargs), strict=False)
    return result
