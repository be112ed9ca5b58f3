"""``tread``: TREAD's random token routing in training (Krause et al. 2025, "TREAD: Token Routing for Efficient
Architecture-agnostic Diffusion Training", arXiv 2501.04765; official code github.com/CompVis/tread, commit
``fccf77c``: ``routing_module.Router``, ``dit.DiT.forward``).

In every training forward a uniformly random share ``ratio`` of each sample's tokens skips blocks
``start..end`` (both included, 0-based): the other ``K = L - floor(L * ratio)`` tokens run them and are put back in
place after block ``end`` (:mod:`dtr_plugins.core.token_routing`). Evaluation and sampling run every token. The
draw is the official one (the first ``K`` of ``argsort(rand(N, L))``), from the global generator that training
re-seeds every step from ``(seed, rank, step)``: a resumed run draws the same tokens.

Deviations from the official code:

- One route (one span) per model; the official ``routes`` list allows several in sequence.
- ``ratio`` is refused outside ``(0, 1)`` and ``end`` past the backbone's last block (one line naming the key);
  the official code takes any value (ratio 1 keeps no token).
- The official forward runs the block after a route's end with autocast disabled (CUDA mixed precision, its
  ``fp32_next``); here that block runs in the run's precision like every other.
- The official ``force_routing`` / ``overwrite_selection_ratio`` (routing at inference) are not offered: routing is
  training-only.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from torch import Tensor

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.token_routing import select_tokens

__all__ = ["TreadParams", "Tread"]


class TreadParams(BaseModel):
    """``token_routing: {name: tread, ratio, start, end}``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    ratio: float = Field(0.5, gt=0.0, lt=1.0, description="share of the tokens that skip blocks start..end "
                         "(TREAD's selection ratio), strictly between 0 and 1")
    start: int = Field(ge=0, description="first block the routed tokens skip (0-based)")
    end: int = Field(ge=0, description="last block they skip (included); start <= end < the backbone's blocks")

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: int, info: ValidationInfo) -> int:
        start = info.data.get("start")
        if start is not None and value < start:
            raise PydanticCustomError("tread_span", "{end} is before start {start} (allowed: start <= end)",
                                      {"end": value, "start": start})
        return value


class Tread:
    """TREAD's router: ``select(n, tokens)`` draws the ``K`` tokens per sample that run blocks ``start..end``."""

    def __init__(self, ratio: float = 0.5, *, start: int, end: int):
        p = TreadParams(ratio=ratio, start=start, end=end)
        self.ratio, self.start, self.end = p.ratio, p.start, p.end

    def keep_count(self, tokens: int) -> int:
        """``K = tokens - floor(tokens * ratio)`` (the official ``num_keep``), at least 1 for ``ratio < 1``."""
        return tokens - int(tokens * self.ratio)

    def select(self, n: int, tokens: int, device: Any = None) -> Tensor:
        """``[n, K]`` int64 indices of the tokens that run the span, a uniform random subset per sample."""
        return select_tokens(n, tokens, self.keep_count(tokens), device)

    def applied(self) -> dict[str, Any]:
        return {"name": "tread", "ratio": self.ratio, "start": self.start, "end": self.end}

    def __repr__(self) -> str:
        return f"tread(ratio={self.ratio}, blocks {self.start}..{self.end})"


@hookimpl
def dtr_register_token_routers(register: Callable[..., None]) -> None:
    register("tread", Tread, params=TreadParams,
             description="TREAD (Krause et al.): a random share of the tokens skips a span of blocks in training")
