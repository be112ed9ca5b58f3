"""``latent_dit``: DiT on the latents of a frozen diffusers ``AutoencoderKL`` (the config's ``vae`` section).

The parameters are DiT's (``size: B/2`` and so on) except ``input_size`` and ``in_channels``, which come
from the VAE's own config: ``in_channels = latent_channels`` and ``input_size = data.image_size // 2 **
(len(block_out_channels) - 1)``. ``build_model`` hands the factory the VAE (:class:`FrozenVae`) and the
pixel size. The weights, state dict and checkpoints are exactly those of a ``dit`` of that geometry; the
VAE is a plain attribute, outside ``state_dict()``, ``parameters()`` and the EMA.

The engine's hooks:

- ``prepare_batch`` (training): a batch of cached posteriors ``[N, V, 2, C, h, w]`` (``V`` views: the
  image and its flip, or the image only) becomes ``mean + std * noise`` of a random view per sample,
  on the device; a batch of images ``[N, 3, H, W]`` is encoded online by the VAE (slower).
- ``sample_shape`` and ``decode_latents`` (sampling): noise of the latent shape; the sampled latents are
  decoded by the VAE in chunks into images in ``[-1, 1]``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from dtr_plugins.core.errors import ConfigError, DataError
from dtr_plugins.core.hookspecs import hookimpl

from .dit import DIT_SIZES, DiT, DiTParams


class LatentDiTParams(DiTParams):
    """DiT's parameters; ``input_size`` and ``in_channels`` are set from the VAE and must stay unset."""

    input_size: int | None = Field(None, description="set from the VAE: data.image_size // its downsampling factor")
    in_channels: int | None = Field(None, description="set from the VAE: its latent_channels")

    # Replaces DiTParams' divisibility check of input_size (done against the VAE's latent size instead).
    @field_validator("input_size")
    @classmethod
    def _divisible_by_patch(cls, value: int | None, info: ValidationInfo) -> int | None:
        return _unset(value, "data.image_size // the VAE's downsampling factor")

    @field_validator("in_channels")
    @classmethod
    def _channels_from_vae(cls, value: int | None) -> int | None:
        return _unset(value, "the VAE's latent_channels")


def _unset(value: Any, source: str) -> None:
    if value is not None:
        raise PydanticCustomError("latent_geometry", "latent_dit sets this from {source}; remove the key",
                                  {"source": source})
    return None


class LatentDiT(DiT):
    """A DiT whose inputs are the scaled latents of ``vae``; see the module docstring.

    Args:
        vae: the frozen VAE (:class:`dtr_plugins.engine.latents.FrozenVae`); ``build_model`` passes it.
        image_size: pixel side of the data (``data.image_size``).
        **params: DiT's parameters (:class:`LatentDiTParams`).
    """

    #: ``build_model`` passes ``vae=`` and ``image_size=`` to factories that declare this.
    uses_vae = True

    def __init__(self, *, vae: Any = None, image_size: int | None = None, input_size: int | None = None,
                 in_channels: int | None = None, **params: Any):
        if vae is None:
            raise ConfigError("vae.path: backbone 'latent_dit' works on VAE latents and needs a vae section, e.g. "
                              "vae: {path: stabilityai/sd-vae-ft-ema} (a hub id or a local diffusers folder)")
        if input_size is not None or in_channels is not None:
            raise ConfigError("backbone: latent_dit sets input_size and in_channels from the VAE; remove them")
        if image_size is None:
            raise ConfigError("data.image_size: latent_dit needs the dataset's image size")
        latent = vae.latent_size(int(image_size))
        patch = _patch_size(params)
        if patch is not None and latent % patch:
            raise ConfigError(f"data.image_size: {image_size}px images give {latent}x{latent} latents (the VAE "
                              f"downsamples by {vae.downsample}), not divisible by backbone.patch_size {patch}")
        super().__init__(input_size=latent, in_channels=vae.latent_channels, **params)
        self.image_size = int(image_size)
        self.vae = vae  # a plain attribute (not a Module): outside state_dict, parameters and the EMA

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latents the diffusion samples."""
        return (self.in_channels, self.input_size, self.input_size)

    @property
    def scale_factor(self) -> float:
        return self.vae.scale_factor

    def prepare_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Training input: cached posteriors -> a latent sample (random view); images -> VAE-encoded latents."""
        if batch.ndim == 6:  # [N, V, 2 (mean, std), C, h, w] from the latent cache, already scaled
            n, views = batch.shape[:2]
            if views > 1:
                pick = torch.randint(views, (n,), device=batch.device)
                post = batch[torch.arange(n, device=batch.device), pick]
            else:
                post = batch[:, 0]
            post = post.float()
            mean, std = post[:, 0], post[:, 1]
            return mean + std * torch.randn_like(mean)
        if batch.ndim == 4:
            return self.vae.encode(batch)
        raise DataError(f"latent_dit: expected images [N, C, H, W] or cached posteriors [N, V, 2, C, h, w], "
                        f"got a batch of shape {tuple(batch.shape)}")

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Sampled (scaled) latents -> images in ``[-1, 1]``, NCHW, decoded ``vae.batch_size`` at a time."""
        return self.vae.decode(latents)

    def extra_repr(self) -> str:
        return (f"vae={self.vae.source!r}, latent={self.in_channels}x{self.input_size}x{self.input_size}, "
                f"image_size={self.image_size}, scale_factor={self.vae.scale_factor}")


def _patch_size(params: dict[str, Any]) -> int | None:
    """The patch size the DiT will use (explicit, from a size preset, or the default 2); None if unknown."""
    if params.get("patch_size") is not None:
        return int(params["patch_size"])
    size = params.get("size")
    if size is None:
        return 2
    name = size[4:] if size.startswith("DiT-") else size
    return DIT_SIZES[name]["patch_size"] if name in DIT_SIZES else None


@hookimpl
def dtr_register_backbones(register: Callable[..., None]) -> None:
    register("latent_dit", LatentDiT, params=LatentDiTParams,
             description="DiT on the latents of a frozen diffusers AutoencoderKL (vae section); every block routed")
