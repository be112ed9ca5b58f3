"""``image_folder``: images under a folder, one subfolder per class (ImageNet/FFHQ layout), ADM preprocessing."""
from __future__ import annotations

from pathlib import Path

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
    def __init__(self, path: str, image_size: int, class_cond: bool = True, random_flip: bool = True):
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"data.path: folder {path!r} does not exist")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"data.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path!r}")
        self.files = files
        classes = sorted({p.parent.relative_to(root).as_posix() for p in files}) if class_cond else ["."]
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
