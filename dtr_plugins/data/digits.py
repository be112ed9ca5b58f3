"""``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), bundled, no download."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from dtr_plugins.core.hookspecs import hookimpl


class DigitsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = Field(8, ge=8, description="side length; 8 is native, larger sizes upsample bilinearly")
    channels: Literal[1, 3] = 1
    split: Literal["all", "a", "b"] = Field("all", description="a / b: two disjoint seeded halves (for real-vs-real metrics)")
    random_flip: bool = Field(False, description="horizontal flips (off by default: flipped digits are other glyphs)")


class Digits(Dataset):
    """Images in [-1, 1] as float ``[channels, image_size, image_size]`` with their digit label."""

    num_classes = 10
    classes = [str(d) for d in range(10)]  # label i is the digit i

    def __init__(self, image_size: int = 8, channels: int = 1, split: str = "all", random_flip: bool = False):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(bunch.images).float().div(16.0).mul(2).sub(1).unsqueeze(1)  # [N,1,8,8]
        labels = torch.from_numpy(bunch.target).long()
        if split != "all":
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234))
            half = len(order) // 2
            keep = order[:half] if split == "a" else order[half:]
            images, labels = images[keep], labels[keep]
        if image_size != 8:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images = images.clamp(-1, 1).expand(-1, channels, -1, -1).contiguous()
        self.labels = labels
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, int(self.labels[index])


@hookimpl
def dtr_register_datasets(register):
    register("digits", Digits, params=DigitsParams, description="scikit-learn 8x8 digits, offline (the default)")
