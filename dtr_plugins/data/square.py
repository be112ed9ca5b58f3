"""Params shared by datasets of square images (``digits``, ``fashion_mnist``): the dataset capabilities.

A subclass declares its fields (``image_size``, ``channels``, ``split``, ``random_flip``, with its own defaults and
descriptions) and, when its held-out images go by another split name, :attr:`SquareImageParams.HELDOUT`. The
methods are the optional dataset capabilities of :mod:`dtr_plugins.core.contracts`: ``SupportsImageShape``,
``SupportsImageSize``, ``SupportsAugmentation`` and ``SupportsHeldoutSplit``.
"""
from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

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
