"""Token routing in training (the ``token_router`` kind, config ``token_routing: {name, **params}``).

A token router (:class:`~dtr_plugins.core.contracts.TokenRouter`; built-in ``tread``, TREAD: Krause et al. 2025,
"TREAD: Token Routing for Efficient Architecture-agnostic Diffusion Training") picks, per training forward, the
tokens that run a span of blocks ``start..end`` (both included); the others skip the span and are put back in
their places after block ``end``, unchanged. The math, for block tokens ``h`` ``[N, L, D]`` and kept indices
``ids`` ``[N, K]`` (``K = L - floor(L * ratio)``)::

    before block start:  saved = h;  h = gather(h, ids)            # [N, K, D]
    after block end:     h = scatter(saved, ids, h)                # [N, L, D]: kept rows replaced, others as saved

Only training forwards route (``model.training``); evaluation and sampling run every token, so an exported model
carries nothing of it. A backbone opts in with :class:`~dtr_plugins.core.contracts.SupportsTokenRouting` (the
:class:`TokenRoutedBlocks` mixin gives it) and calls :meth:`TokenRoutedBlocks.token_skip` once per forward.

Channel routing composes: a block inside the span gets its (per-sample) channel masks or unit routes as
without token routing; they act on the ``K`` tokens it sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dtr_plugins.core.contracts import SupportsTokenRouting, TokenRouter

__all__ = ["TokenSkip", "TokenRoutedBlocks", "keep_ratios", "token_record", "describe_keep_ratios"]


@dataclass
class TokenSkip:
    """One training forward's route: ``ids`` ``[N, K]`` int64 (the tokens that run blocks ``start..end``).

    :meth:`enter` before and :meth:`leave` after every block (both no-ops outside the span ends).
    """

    start: int
    end: int
    ids: Tensor
    saved: Tensor | None = None

    def _index(self, width: int) -> Tensor:
        return self.ids.unsqueeze(-1).expand(-1, -1, width)

    def enter(self, block: int, h: Tensor) -> Tensor:
        """Before block ``block``: at ``start``, keep the full tokens ``h`` ``[N, L, D]``, return ``[N, K, D]``."""
        if block != self.start:
            return h
        self.saved = h
        return h.gather(1, self._index(h.shape[2]))

    def leave(self, block: int, h: Tensor) -> Tensor:
        """After block ``block``: at ``end``, the kept tokens ``h`` ``[N, K, D]`` back in place, ``[N, L, D]``."""
        if block != self.end or self.saved is None:
            return h
        out = self.saved.scatter(1, self._index(h.shape[2]), h)  # out of place: saved stays as it was
        self.saved = None
        return out


class TokenRoutedBlocks:
    """Mixin of a transformer backbone (an ``nn.Module``) that can route tokens: satisfies
    :class:`~dtr_plugins.core.contracts.SupportsTokenRouting` given ``token_layout()``."""

    training: bool
    #: the attached router (None: every forward runs every token)
    token_router: TokenRouter | None = None

    def attach_token_routing(self, router: TokenRouter) -> None:
        """Route tokens with ``router`` in training forwards (the composition root checked its span)."""
        self.token_router = router

    def token_skip(self, h: Tensor) -> TokenSkip | None:
        """This forward's route for the block tokens ``h`` ``[N, L, D]``: None in eval mode or without a router
        (draws the selection from the global generator of ``h``'s device, which training re-seeds every step)."""
        router = self.token_router
        if router is None or not self.training:
            return None
        return TokenSkip(router.start, router.end, router.select(h.shape[0], h.shape[1], h.device))


def keep_ratios(router: TokenRouter, blocks: int, tokens: int) -> list[float]:
    """Share of the ``tokens`` tokens each of ``blocks`` blocks sees in a training forward (1.0 outside the span)."""
    kept = router.keep_count(tokens) / tokens
    return [kept if router.start <= b <= router.end else 1.0 for b in range(blocks)]


def token_record(model: Any) -> dict[str, Any] | None:
    """What ``meta.json`` records of a model's token routing (None: none attached): the router's ``applied()``,
    the backbone's ``blocks`` and ``tokens``, and ``keep_ratio`` per block."""
    if not isinstance(model, SupportsTokenRouting) or model.token_router is None:
        return None
    router = model.token_router
    blocks, tokens = model.token_layout()
    return {**router.applied(), "applied": True, "training_only": True, "blocks": blocks, "tokens": tokens,
            "keep_ratio": keep_ratios(router, blocks, tokens)}


def describe_keep_ratios(record: dict[str, Any]) -> str:
    """One line: ``token routing <name>: keep ratio per block 1.00 1.00 0.50 ...`` (of :func:`token_record`)."""
    ratios = " ".join(f"{r:.2f}" for r in record["keep_ratio"])
    return (f"token routing {record['name']} (training only, {record['tokens']} tokens): keep ratio per block "
            f"{ratios}")


def select_tokens(n: int, tokens: int, keep: int, device: Any = None) -> Tensor:
    """``[n, keep]`` int64 indices of a uniformly random subset of ``tokens`` per sample (TREAD's draw: the first
    ``keep`` of ``argsort(rand(n, tokens))``, from the global generator of ``device``)."""
    noise = torch.rand(n, tokens, device=device)
    return torch.argsort(noise, dim=1)[:, :keep]
