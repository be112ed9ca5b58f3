"""The run's token router (``token_routing`` section, ``token_router`` kind), built and attached to the backbone
by :func:`~dtr_plugins.compose.build.build_model`; ``dtr validate`` finds its mistakes the same way (one line)."""
from __future__ import annotations

from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.contracts import SupportsTokenRouting, TokenRouter, missing_members
from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.plugins import PluginRegistry

__all__ = ["attach_token_router"]


def attach_token_router(cfg: ExperimentConfig, model: object, registry: PluginRegistry) -> None:
    """Build ``cfg.token_routing``'s router and attach it to ``model`` (nothing when the section is unset).

    Raises :class:`ConfigError` when the backbone cannot route tokens or the span ends past its last block,
    :class:`PluginError` when the router lacks a member of :class:`TokenRouter`."""
    section = cfg.token_routing
    if section is None:
        return
    if not isinstance(model, SupportsTokenRouting):
        raise ConfigError(f"token_routing.name: backbone '{cfg.backbone.name}' does not route tokens (a backbone "
                          f"with token_layout / attach_token_routing is needed, e.g. dit); remove token_routing")
    info = registry.get("token_router", section.name)
    router = info.build(**section.params)
    missing = missing_members(router, TokenRouter)
    if missing:
        raise PluginError(f"token_router '{section.name}' of {info.origin} does not satisfy the TokenRouter contract: "
                          f"missing {', '.join(missing)} (see dtr_plugins/core/contracts.py)")
    blocks, tokens = model.token_layout()
    if not 0 <= router.start <= router.end < blocks:
        raise ConfigError(f"token_routing.end: blocks {router.start}..{router.end} are not blocks of backbone "
                          f"'{cfg.backbone.name}', which has {blocks} (allowed: 0 <= start <= end <= {blocks - 1})")
    if not 1 <= router.keep_count(tokens) <= tokens:
        raise ConfigError(f"token_routing: {router!r} keeps {router.keep_count(tokens)} of the {tokens} tokens "
                          f"(allowed: 1 to {tokens}); choose another ratio")
    model.attach_token_routing(router)
