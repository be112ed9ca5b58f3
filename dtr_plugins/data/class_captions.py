"""Offline caption sets for tests and demos: ``digits_captions`` and ``fashion_captions``.

Each image of ``digits`` / ``fashion_mnist`` gets the captions of its class: every template of ``templates``
with ``{name}`` replaced by the class name (``"a photo of a sneaker"``, ``"a handwritten digit seven"``). Items
are ``(image, item index)``: the label is the index (``SupportsCaptions``), so the training loop draws one of the
item's captions each step (``conditioners/text_cache.TextStage``); the dataset declares one class
(``num_classes = 1``, no class labels reach the model). ``caption_classes()`` maps each caption to its class,
for the prompt-class agreement metric. docs/text_to_image.md.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch.utils.data import Dataset

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.data.digits import Digits, DigitsParams
from dtr_plugins.data.fashion_mnist import CLASSES as FASHION_CLASSES
from dtr_plugins.data.fashion_mnist import FashionMNIST, FashionMNISTParams

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_NAMES = [c.lower() for c in FASHION_CLASSES]  # "t-shirt/top", ..., "sneaker", "bag", "ankle boot"
DIGIT_TEMPLATES = ["a handwritten digit {name}", "the number {name}", "a picture of a {name}", "{name}"]
FASHION_TEMPLATES = ["a photo of a {name}", "a picture of a {name}", "a black and white photo of a {name}",
                     "a {name}"]


def _check_templates(value: list[str]) -> list[str]:
    if not value or any("{name}" not in t or t.replace("{name}", "").count("{") for t in value):
        raise ValueError("each template must contain {name} (and no other braces); give at least one")
    return value


class _ClassCaptions:
    """The caption methods shared by both params models (``SupportsCaptions``)."""

    NAMES: ClassVar[list[str]]
    templates: list[str]

    def _base(self) -> Any:
        raise NotImplementedError

    def class_captions(self) -> list[list[str]]:
        """Class ``c`` -> its captions (every template with the class name)."""
        return [[t.format(name=name) for t in self.templates] for name in self.NAMES]

    def caption_sets(self) -> list[list[str]]:
        """Item ``i`` -> the captions of its class."""
        per_class = self.class_captions()
        return [per_class[int(y)] for y in self._base().labels.tolist()]

    def caption_classes(self) -> dict[str, int]:
        """Caption -> class index (a caption shared by two classes is refused when the params are validated)."""
        return {c: k for k, captions in enumerate(self.class_captions()) for c in captions}


class DigitsCaptionsParams(_ClassCaptions, DigitsParams):
    NAMES: ClassVar[list[str]] = DIGIT_NAMES
    templates: list[str] = Field(default_factory=lambda: list(DIGIT_TEMPLATES),
                                 description="captions of a class: each with {name} replaced by the digit's name")

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        return _check_templates(value)

    def _base(self) -> Digits:
        return Digits(**self.model_dump(exclude={"templates"}))


class FashionCaptionsParams(_ClassCaptions, FashionMNISTParams):
    NAMES: ClassVar[list[str]] = FASHION_NAMES
    templates: list[str] = Field(default_factory=lambda: list(FASHION_TEMPLATES),
                                 description="captions of a class: each with {name} replaced by the garment's name")

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        return _check_templates(value)

    def _base(self) -> FashionMNIST:
        return FashionMNIST(**self.model_dump(exclude={"templates"}))


class CaptionedItems(Dataset):
    """``(image, item index)`` of a labelled image dataset (the captions live in the params model)."""

    num_classes = 1

    def __init__(self, base: Any):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.base[index]
        return image, int(index)


def digits_captions(templates: list[str], **params: Any) -> CaptionedItems:
    """``digits`` images with their class captions."""
    return CaptionedItems(Digits(**params))


def fashion_captions(templates: list[str], **params: Any) -> CaptionedItems:
    """``fashion_mnist`` images with their class captions."""
    return CaptionedItems(FashionMNIST(**params))


@hookimpl
def dtr_register_datasets(register):
    register("digits_captions", digits_captions, params=DigitsCaptionsParams,
             description="digits with class-name captions from templates, offline (text-to-image demo)")
    register("fashion_captions", fashion_captions, params=FashionCaptionsParams,
             description="Fashion-MNIST with class-name captions from templates (text-to-image demo)")
