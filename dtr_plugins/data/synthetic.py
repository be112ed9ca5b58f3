"""``synthetic``: small deterministic class-dependent images for tests (no files, no download)."""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.seeds import SEED_MAX, derived


class SyntheticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_samples: int = Field(256, ge=1)
    image_size: int = Field(8, ge=2)
    channels: int = Field(1, ge=1)
    num_classes: int = Field(4, ge=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    split: Literal["train", "heldout"] = Field("train", description="heldout: other draws of the same patterns")
    heldout_samples: int = Field(64, ge=1, description="size of the heldout split")

    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image (the dataset contract's ``SupportsImageShape``)."""
        return (self.channels, self.image_size, self.image_size)

    def heldout_split(self) -> SyntheticParams:
        """The held-out split of the same data, never augmented."""
        return self.model_copy(update={"split": "heldout"})


#: added to ``seed`` for the held-out draws, so they never repeat a training image
HELDOUT_SEED_OFFSET = 1_000_003


class Synthetic(Dataset):
    """Class ``k`` is a sinusoidal stripe pattern at angle ``k * pi / num_classes`` plus a little noise.

    ``split="heldout"`` gives ``heldout_samples`` images drawn with the seed ``seed + HELDOUT_SEED_OFFSET``
    (same patterns, other phases and noise); the train split does not depend on it."""

    def __init__(self, num_samples: int = 256, image_size: int = 8, channels: int = 1, num_classes: int = 4,
                 seed: int = 0,
                 split: str = "train", heldout_samples: int = 64):
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be train or heldout, got {split!r}")
        if split == "heldout":
            num_samples, seed = heldout_samples, derived(seed + HELDOUT_SEED_OFFSET)
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(num_samples) % num_classes
        coords = torch.linspace(-1, 1, image_size)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        angle = self.labels.float()[:, None, None] * math.pi / num_classes
        phase = torch.rand(num_samples, 1, 1, generator=gen) * 2 * math.pi
        wave = torch.sin(3 * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
        noise = 0.05 * torch.randn(num_samples, channels, image_size, image_size, generator=gen)
        self.images = (wave[:, None].expand(-1, channels, -1, -1) + noise).clamp(-1, 1)
        self.num_classes = num_classes
        self.classes = [str(k) for k in range(num_classes)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


@hookimpl
def dtr_register_datasets(register):
    register("synthetic", Synthetic, params=SyntheticParams, description="deterministic stripe patterns (tests)")
