"""The ``text`` config section of a text-to-image run: the conditioner (a ``conditioner`` plugin) and how its
outputs are used (caption dropout, the text-embedding cache). docs/text_to_image.md."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import PluginRegistry

__all__ = ["TextSection", "resolve_text", "KIND"]

KIND = "conditioner"


class TextSection(BaseModel):
    """``text: {name: clip_text, path: ..., caption_dropout: 0.1, ...}``: the conditioner's params (checked by its
    params model) plus the fields below (not the plugin's)."""

    model_config = ConfigDict(extra="allow")
    name: str

    caption_dropout: float = Field(0.1, ge=0, le=1, description="probability that a training sample's caption is "
                                   "replaced by the empty caption (classifier-free guidance)")
    cache_dir: str | None = Field(None, description="root of text-embedding caches; default <output_dir>/text_cache")
    cache_dtype: Literal["float32", "float16"] = Field("float32", description="storage type of cached embeddings")
    clip_score_model: str | None = Field(None, description="a CLIP model (hub id or local folder: CLIPModel and its "
                                         "processor) that scores evaluation samples against their prompts; none: no "
                                         "CLIP score")
    eval_prompts: str | None = Field(None, description="prompts of evaluation samples: a text file (one per line) or "
                                     "a COCO captions .json (one caption per image, drawn with the run's seed); "
                                     "default: captions of the training data drawn with the run's seed")

    @property
    def params(self) -> dict[str, Any]:
        """The conditioner's params (every key but the fields above)."""
        return dict(self.model_extra or {})


def resolve_text(section: TextSection, registry: PluginRegistry) -> TextSection:
    """The section with its conditioner's params validated and defaults filled in; one ConfigError line for an
    unknown conditioner or a bad param."""
    if section.name not in registry.names(KIND):
        known = ", ".join(registry.names(KIND)) or "none installed"
        raise ConfigError(f"text.name: unknown conditioner {section.name!r} (known: {known})")
    validated = registry.get(KIND, section.name).validate(section.params, where="text")
    fixed: dict[str, Any] = section.model_dump(exclude=set(section.params))
    return TextSection(**fixed, **validated.model_dump(mode="json"))
