"""The text stage of a text-to-image run (config -> :class:`~dtr_plugins.conditioners.text_cache.TextStage`).

A ``text`` section names a conditioner plugin; the backbone must be text-conditioned
(:class:`~dtr_plugins.core.contracts.SupportsTextConditioning`) with ``text_dim`` and ``text_length`` equal to the
conditioner's ``embed_dim`` and ``max_length``, and the training data captioned (``SupportsCaptions`` on its params
model). A text-conditioned backbone without a text section, or a text section beside a backbone that reads no
text, is one ConfigError line. docs/text_to_image.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dtr_plugins.conditioners.text_cache import TextEmbeddingCache, TextStage
from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.contracts import Conditioner, SupportsCaptions, SupportsTextConditioning, missing_members
from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.plugins import PluginRegistry, default_registry
from dtr_plugins.core.text_config import KIND

__all__ = ["check_text", "check_captioned", "build_conditioner", "build_text_stage", "text_cache_root"]

_EXAMPLE = "text: {name: clip_text, path: openai/clip-vit-large-patch14}"


def check_captioned(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> None:
    """A ``text`` section with data: the dataset must be captioned (no files read)."""
    if cfg.text is None or cfg.data is None:
        return
    registry = registry or default_registry()
    params = registry.get("dataset", cfg.data.name).validate(cfg.data.params, where="data")
    if not isinstance(params, SupportsCaptions):
        raise ConfigError(f"data.name: dataset {cfg.data.name!r} has no captions (its params model lacks "
                          f"caption_sets(), SupportsCaptions in dtr_plugins/core/contracts.py), which the text "
                          f"section needs; use coco_captions, image_text, digits_captions or fashion_captions")


def check_text(cfg: ExperimentConfig, model: Any, registry: PluginRegistry | None = None) -> None:
    """The text section against the backbone (text-conditioned or not) and the data (captioned); no files read."""
    text_model = isinstance(model, SupportsTextConditioning)
    if cfg.text is None and text_model:
        raise ConfigError(f"text: backbone {cfg.backbone.name!r} is text-conditioned and needs a text section, "
                          f"e.g. {_EXAMPLE}")
    if cfg.text is not None and not text_model:
        raise ConfigError(f"text: backbone {cfg.backbone.name!r} reads no text; use dit_t2i or latent_dit_t2i, or "
                          f"remove the text section")
    check_captioned(cfg, registry)


def build_conditioner(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> Conditioner:
    """The conditioner of ``cfg.text`` (its weights load on first use), checked against its Protocol."""
    assert cfg.text is not None
    registry = registry or default_registry()
    info = registry.get(KIND, cfg.text.name)
    conditioner = info.build(**cfg.text.params)
    missing = missing_members(conditioner, Conditioner)
    if missing:
        raise PluginError(f"conditioner '{info.name}' of {info.origin} lacks {', '.join(missing)} of "
                          f"dtr_plugins.core.contracts.Conditioner")
    return conditioner


def text_cache_root(cfg: ExperimentConfig) -> Path:
    """``text.cache_dir`` or ``<output_dir>/text_cache``."""
    assert cfg.text is not None
    return Path(cfg.text.cache_dir).expanduser() if cfg.text.cache_dir else Path(cfg.output_dir) / "text_cache"


def build_text_stage(cfg: ExperimentConfig, model: Any, registry: PluginRegistry | None = None, *,
                     captions: bool = True) -> TextStage | None:
    """The run's :class:`TextStage` (None without a text section), after :func:`check_text`. ``captions``: read
    the training data's captions (training); False for sampling (prompts only)."""
    registry = registry or default_registry()
    check_text(cfg, model, registry)
    if cfg.text is None:
        return None
    conditioner = build_conditioner(cfg, registry)
    for key, wanted, given in (("text_dim", conditioner.embed_dim, model.text_dim),
                               ("text_length", conditioner.max_length, model.text_length)):
        if int(wanted) != int(given):
            raise ConfigError(f"backbone.{key}: {given} but the conditioner {cfg.text.name!r} gives {wanted} "
                              f"(text.{'path' if key == 'text_dim' else 'max_length'}); set backbone.{key}: {wanted}")
    caption_list = None
    if captions and cfg.data is not None:
        params = registry.get("dataset", cfg.data.name).validate(cfg.data.params, where="data")
        assert isinstance(params, SupportsCaptions)  # check_text refused the others
        caption_list = params.caption_sets()
    cache = TextEmbeddingCache(conditioner, text_cache_root(cfg), dtype=cfg.text.cache_dtype,
                               describe={"name": cfg.text.name, "repr": repr(conditioner)})
    return TextStage(cache, caption_list, cfg.text.caption_dropout)
