"""What datasets of square images held in memory share (``digits``, ``fashion_mnist``): the params with their
dataset capabilities (:class:`SquareImageParams`) and the dataset itself (:class:`SquareImages`).

A subclass declares its fields (``image_size``, ``channels``, ``split``, ``random_flip``, with its own defaults and
descriptions) and, when its held-out images go by another split name, :attr:`SquareImageParams.HELDOUT`. The
methods are the optional dataset capabilities of :mod:`dtr_plugins.core.contracts`: ``SupportsImageShape``,
``SupportsImageSize``, ``SupportsAugmentation`` and ``SupportsHeldoutSplit``.
"""
from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch.utils.data import Dataset

P = TypeVar("P", bound="SquareImageParams")


class SquareImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int
    channels: int = 1
    split: str
    random_flip: bool = False
    #: the ``split`` value that names the held-out images (never trained on)
    HELDOUT: ClassVar[str] = "heldout"

    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return (self.channels, self.image_size, self.image_size)

    @classmethod
    def with_image_size(cls, params: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """``params`` with ``image_size`` set to a square sample size when unset."""
        return {"image_size": height, **params} if height == width else params

    def random_hflip(self) -> bool:
        return self.random_flip

    def unaugmented(self: P) -> P:
        return self.model_copy(update={"random_flip": False})

    def heldout_split(self: P) -> P:
        """The held-out split of the same data, never augmented."""
        return self.model_copy(update={"split": self.HELDOUT, "random_flip": False})


class SquareImages(Dataset):
    """Images in [-1, 1] as float ``[channels, image_size, image_size]`` with their int label.

    ``images``: float ``[N, 1, h, h]`` in [-1, 1] at the data's native size ``h``; other sizes are resized
    bilinearly (``align_corners=False``), then clamped to [-1, 1] and repeated over ``channels``. ``labels``:
    int64 ``[N]``. With ``random_flip`` an item is mirrored horizontally with probability 1/2 (one
    ``torch.rand`` draw per item, so resume and worker counts see the same flips).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, image_size: int, channels: int,
                 random_flip: bool):
        if image_size != images.shape[-1]:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images = images.clamp(-1, 1).expand(-1, channels, -1, -1).contiguous()
        self.labels = labels
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, int(self.labels[index])
