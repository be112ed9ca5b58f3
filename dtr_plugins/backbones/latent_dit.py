"""``latent_dit``: DiT on the latents of a codec (a frozen diffusers ``AutoencoderKL``: the ``vae`` section).

The parameters are DiT's (``size: B/2`` and so on); ``input_size`` and ``in_channels`` come from the
codec's latent shape of ``data.image_size`` images (the composition root fills them in; explicit values
must agree with it). For an ``AutoencoderKL``: ``in_channels = latent_channels`` and ``input_size =
data.image_size // 2 ** (len(block_out_channels) - 1)``. The weights, state dict and checkpoints are
exactly those of a ``dit`` of that geometry; the codec is not part of the model (encoding, the latent
cache and decoding are the engine's codec stage, :mod:`dtr_plugins.codecs`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from dtr_plugins.backbones.dit import DiT, DiTParams
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl


class LatentDiTParams(DiTParams):
    """DiT's parameters; ``input_size`` and ``in_channels`` default to the codec's latent geometry."""

    input_size: int | None = Field(None, ge=1, description="default: data.image_size // the VAE's downsampling "
                                   "factor (an explicit value must agree)")
    in_channels: int | None = Field(None, ge=1, description="default: the VAE's latent_channels (an explicit "
                                    "value must agree)")

    @field_validator("input_size")
    @classmethod
    def _divisible_by_patch(cls, value: int | None, info: ValidationInfo) -> int | None:
        patch = info.data.get("patch_size")
        if value is not None and patch is not None and value % patch:
            raise PydanticCustomError("dit_input", "input_size={size} must be divisible by patch_size={patch}",
                                      {"size": value, "patch": patch})
        return value


class LatentDiT(DiT):
    """A DiT whose inputs are a codec's normalised latents; see the module docstring."""

    input_space: ClassVar[Literal["pixels", "latents"]] = "latents"

    def __init__(self, *, input_size: int | None = None, in_channels: int | None = None, **params: Any):
        if input_size is None or in_channels is None:
            raise ConfigError("backbone: latent_dit takes input_size and in_channels from the codec; build it "
                              "with dtr_plugins.build_model(cfg) (a config with a vae or codec section)")
        super().__init__(input_size=input_size, in_channels=in_channels, **params)


@hookimpl
def dtr_register_backbones(register: Callable[..., None]) -> None:
    register("latent_dit", LatentDiT, params=LatentDiTParams,
             description="DiT on the latents of a codec (vae section: a frozen AutoencoderKL); every block routed")
