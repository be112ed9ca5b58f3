"""The run's regulariser (``regularizer`` kind, e.g. ``repa``), built from the ``regularizer`` section and bound
to the backbone's token layout. Built by ``dtr train`` and ``dtr validate`` only, never by sampling or export (the
exported model is the plain backbone; the regulariser's encoder is not needed to sample).
"""
from __future__ import annotations

from dtr_plugins.compose.build import Components
from dtr_plugins.core.contracts import Regularizer, SupportsBlockTokens, missing_members
from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.plugins import PluginRegistry, default_registry

__all__ = ["build_regularizer"]


def build_regularizer(parts: Components, registry: PluginRegistry | None = None) -> Regularizer | None:
    """The :class:`~dtr_plugins.core.contracts.Regularizer` of ``parts.cfg.regularizer`` bound to ``parts.model``
    (its trainable part initialised from the global torch generator, on the CPU), or None without the section.

    Raises ConfigError (one line naming ``regularizer.<key>``) when the backbone has no readable block tokens
    (:class:`~dtr_plugins.core.contracts.SupportsBlockTokens`), when the data are a latent cache (no clean pixels
    for the encoder) or when the plugin refuses the layout; PluginError when the plugin misses a member."""
    section = parts.cfg.regularizer
    if section is None:
        return None
    model = parts.model
    if not isinstance(model, SupportsBlockTokens):
        raise ConfigError(f"regularizer.name: {section.name} reads a block's hidden tokens; backbone "
                          f"'{parts.cfg.backbone.name}' does not give them (a transformer backbone such as dit does)")
    if parts.model_input.cached:
        raise ConfigError(f"regularizer.name: {section.name} encodes the clean images, but the data are a latent "
                          f"cache (posteriors, no pixels): remove the cache or the regularizer section")
    info = (registry or default_registry()).get("regularizer", section.name)
    built = info.build(**section.params)
    missing = missing_members(built, Regularizer)
    if missing:
        raise PluginError(f"regularizer '{section.name}' of {info.origin} does not satisfy the Regularizer contract: "
                          f"missing {', '.join(missing)} (see dtr_plugins/core/contracts.py)")
    built.bind(model.block_layout())
    return built
