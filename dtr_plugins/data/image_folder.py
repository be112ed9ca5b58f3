"""``image_folder``: images under a folder, one subfolder per class (ImageNet/FFHQ layout), ADM preprocessing.

Held-out split: with ``heldout_fraction = f``, an image is held out when the SHA-256 of its path relative to
the folder, read as a number in [0, 1), is below ``f``. The choice depends on the file's own name only, so
adding or removing other files never moves an image between ``train`` and ``heldout``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from dtr_plugins.core.errors import DataError
from dtr_plugins.core.hookspecs import hookimpl

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}


class ImageFolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="folder of images; with class_cond, one subfolder per class")
    image_size: int = Field(ge=8)
    class_cond: bool = True
    random_flip: bool = True
    split: Literal["train", "heldout"] = Field("train",
                                               description="train: the images not held out; heldout: the others")
    heldout_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                    description="share of images held out, picked by a hash of their relative path")


def is_heldout(relative_path: str, fraction: float) -> bool:
    """Is the file at ``relative_path`` (posix, relative to the dataset folder) in the held-out share?"""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's centre crop: halve with BOX while large, resize the short side with BICUBIC, crop the centre."""
    while min(*image.size) >= 2 * image_size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = image_size / min(*image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


class ImageFolder(Dataset):
    def __init__(self, path: str, image_size: int, class_cond: bool = True, random_flip: bool = True,
                 split: str = "train", heldout_fraction: float = 0.0):
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"data.path: folder {path!r} does not exist")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"data.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path!r}")
        # classes come from every file, so both splits give a class the same label
        classes = sorted({p.parent.relative_to(root).as_posix() for p in files}) if class_cond else ["."]
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be train or heldout, got {split!r}")
        if heldout_fraction > 0 or split == "heldout":
            want = split == "heldout"
            files = [p for p in files if is_heldout(p.relative_to(root).as_posix(), heldout_fraction) == want]
            if not files:
                raise DataError(f"data.path: no {split} images under {path!r} with data.heldout_fraction "
                                f"{heldout_fraction:g} (held-out images are picked by a hash of their path; "
                                f"allowed: a fraction in [0, 1) that leaves both splits non-empty)")
        self.files = files
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.num_classes = len(classes)
        self.class_cond = class_cond
        self.image_size = image_size
        self.random_flip = random_flip
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            with Image.open(path) as img:
                arr = center_crop_arr(img.convert("RGB"), self.image_size)
        except OSError as exc:
            raise DataError(f"{path}: cannot read image: {exc}") from None
        if self.random_flip and torch.rand(()) < 0.5:
            arr = arr[:, ::-1]
        image = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1).permute(2, 0, 1).contiguous()
        label = self.class_index[path.parent.relative_to(self.root).as_posix()] if self.class_cond else 0
        return image, label


@hookimpl
def dtr_register_datasets(register):
    register("image_folder", ImageFolder, params=ImageFolderParams,
             description="images in class subfolders, ADM centre crop and random flip")
