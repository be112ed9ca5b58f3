"""``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), bundled, no download.

Splits: ``heldout`` is a fixed stratified 10% of every class (179 images), chosen by a permutation with
its own constant seed (:data:`HELDOUT_SEED`), so it never depends on a run's seed and is never trained
on; ``train`` (the default) is the other 1,618 images. ``all`` is every image, and ``a`` / ``b`` are two
disjoint seeded halves of ``all`` for real-vs-real metric references (they overlap the held-out subset).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.data.square import SquareImageParams, SquareImages

#: share of every class in the held-out split, and the seed of the permutation that picks it
HELDOUT_FRACTION = 0.1
HELDOUT_SEED = 20240117


class DigitsParams(SquareImageParams):
    image_size: int = Field(8, ge=8, description="side length; 8 is native, larger sizes upsample bilinearly")
    channels: Literal[1, 3] = 1
    split: Literal["train", "heldout", "all", "a", "b"] = Field(
        "train", description="train: all but a fixed stratified 10% (heldout, never trained on); all: every image; "
                             "a / b: two disjoint seeded halves of all (for real-vs-real metrics)")
    random_flip: bool = Field(False, description="horizontal flips (off by default: flipped digits are other glyphs)")


def heldout_mask(labels: torch.Tensor, fraction: float = HELDOUT_FRACTION, seed: int = HELDOUT_SEED) -> torch.Tensor:
    """``[N]`` bool: the first ``round(fraction * n_c)`` images of each class ``c`` in a permutation seeded
    by ``seed`` alone (stratified, and the same for every run)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        members = order[labels[order] == c]  # class c in permutation order
        mask[members[:round(fraction * len(members))]] = True
    return mask


class Digits(SquareImages):
    """Images in [-1, 1] as float ``[channels, image_size, image_size]`` with their digit label."""

    num_classes = 10
    classes = [str(d) for d in range(10)]  # label i is the digit i

    def __init__(self, image_size: int = 8, channels: int = 1, split: str = "train", random_flip: bool = False):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(bunch.images).float().div(16.0).mul(2).sub(1).unsqueeze(1)  # [N,1,8,8]
        labels = torch.from_numpy(bunch.target).long()
        if split in ("train", "heldout"):
            held = heldout_mask(labels)
            keep = held if split == "heldout" else ~held
            images, labels = images[keep], labels[keep]
        elif split in ("a", "b"):
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234))
            half = len(order) // 2
            keep = order[:half] if split == "a" else order[half:]
            images, labels = images[keep], labels[keep]
        elif split != "all":
            raise ValueError(f"split must be train, heldout, all, a or b, got {split!r}")
        super().__init__(images, labels, image_size, channels, random_flip)


@hookimpl
def dtr_register_datasets(register):
    register("digits", Digits, params=DigitsParams,
             description="scikit-learn 8x8 digits, offline (the default); split train / heldout (fixed 10%)")
