"""Parameter counts of a model: all it holds, and what one forward pass uses.

``total`` counts every parameter of the module (trainable or not, the learned routing's included). ``active``
subtracts what its parts declare unused by one forward through
:class:`~dtr_plugins.core.contracts.SupportsActiveParameters` (``time_experts``: every expert but one), so a model
with N time experts reports N times the split weights in ``total`` and one copy in ``active``. The run's
meta.json (``parameters``) and the suite report show both.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from dtr_plugins.core.contracts import SupportsActiveParameters, TimeExpertRouting


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"total": int, "active": int}`` parameters of ``model`` (works on the meta device: shapes only)."""
    total = sum(p.numel() for p in model.parameters())
    inactive = sum(int(part.inactive_parameters()) for part in model.modules()
                   if isinstance(part, SupportsActiveParameters))
    return {"total": int(total), "active": int(total - inactive)}


def parameter_record(model: nn.Module) -> dict[str, Any]:
    """What a run's meta.json and an export record say about the model's size: ``{"parameters": {"total",
    "active"}}``, plus ``time_experts`` (who owns which noise levels, ``TimeExpertRouting.intervals()``) when a part
    of it splits the weights into time experts."""
    out: dict[str, Any] = {"parameters": parameter_counts(model)}
    experts = [part for part in model.modules() if isinstance(part, TimeExpertRouting)]
    if experts:
        out["time_experts"] = experts[0].intervals()
    return out
