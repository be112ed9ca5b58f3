"""``identity``: the codec of pixel backbones; images are the denoiser's inputs as they are."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dtr_plugins.core.hookspecs import hookimpl


class IdentityCodec:
    """``encode`` and ``decode`` return their input unchanged (no copy, no random draw)."""

    bounded = True  # pixels lie in [-1, 1]: the sampler may clip its x0 predictions

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(int(s) for s in image_shape)  # type: ignore[return-value]

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return images, torch.zeros_like(images)

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, latents: Tensor) -> Tensor:
        return latents

    def fingerprint(self) -> str:
        return "identity"

    def __repr__(self) -> str:
        return "IdentityCodec()"


@hookimpl
def dtr_register_codecs(register: Callable[..., None]) -> None:
    register("identity", IdentityCodec, description="pixels: the images themselves (pixel backbones)")
