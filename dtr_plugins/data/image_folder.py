"""``image_folder``: images under a folder, one subfolder per class (ImageNet/FFHQ layout), ADM preprocessing.

Layout and labels (``class_cond: true``): every folder directly under ``path`` is a class; its images, at
any depth below it, get its label. Classes are numbered by sorted folder name (``classes[i]`` names label
``i``; the run directory records them in ``classes.json``). With ``class_cond: false`` every image under
``path`` (any depth) has label 0 and the dataset has one class.

What is refused (one :class:`DataError` line naming the file or folder, before training starts):

- a class folder with no images (left out, it would silently shift the label of every later class);
- with ``class_cond: true``, an image directly in ``path`` (outside any class folder);
- an empty (0-byte) image file;
- no images at all.

Names starting with ``.`` (``.DS_Store``, ``.ipynb_checkpoints``) are skipped silently. Other files whose
suffix is not an image format (:data:`dtr_plugins.core.decode.IMAGE_SUFFIXES`), such as ``README.txt``,
are skipped with one warning that counts them and names the first. A file with an image suffix that
cannot be decoded (truncated, corrupt, not an image) raises :class:`DataError` naming it when it is read
-- also from a DataLoader worker, where torch re-raises it as the same class.

Held-out split: with ``heldout_fraction = f``, an image is held out when the SHA-256 of its path relative to
the folder, read as a number in [0, 1), is below ``f``. The choice depends on the file's own name only, so
adding or removing other files never moves an image between ``train`` and ``heldout``. Classes come from the
whole folder, so both splits give a class the same label (a class may have no images in one split).

Pixels are decoded by :mod:`dtr_plugins.core.decode` (16-bit, float, palette, alpha composited on white,
CMYK ...), then ADM's centre crop (:func:`center_crop_arr`) and, optionally, a random horizontal flip.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from dtr_plugins.core.decode import IMAGE_SUFFIXES, is_image_name, read_rgb
from dtr_plugins.core.errors import DataError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.labels import UNLABELED


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

    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image (the dataset contract's ``SupportsImageShape``)."""
        return (3, self.image_size, self.image_size)

    @classmethod
    def with_image_size(cls, params: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """``params`` with ``image_size`` set to a square sample size when unset (``SupportsImageSize``)."""
        return {"image_size": height, **params} if height == width else params

    def random_hflip(self) -> bool:
        return self.random_flip

    def content_key(self) -> dict[str, Any]:
        """The params with ``path`` as its resolved absolute folder (``SupportsContentKey``: latent caches of
        ``./data`` and ``/abs/data`` are one)."""
        return {**self.model_dump(mode="json"), "path": str(Path(self.path).expanduser().resolve())}

    def unaugmented(self) -> ImageFolderParams:
        return self.model_copy(update={"random_flip": False})

    def heldout_split(self) -> ImageFolderParams | None:
        """The held-out split of the same data, never augmented; None when ``heldout_fraction`` is 0 (nothing
        held out)."""
        if self.heldout_fraction == 0:
            return None
        return self.model_copy(update={"split": "heldout", "random_flip": False})


def is_heldout(relative_path: str, fraction: float) -> bool:
    """Is the file at ``relative_path`` (posix, relative to the dataset folder) in the held-out share?"""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's centre crop: halve with BOX while large, resize the short side with BICUBIC, crop the centre.

    ``image``: 8-bit RGB; returns ``uint8 [image_size, image_size, 3]`` (guided-diffusion
    ``image_datasets.center_crop_arr``).
    """
    while min(*image.size) >= 2 * image_size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = image_size / min(*image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


def _walk(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """``(images, other files, folders)`` under ``root``, sorted, skipping names that start with ``.``.

    Symbolic links to folders are followed (class folders are often links); a link back to a folder that
    contains it (a cycle) is refused with :class:`DataError`.
    """
    images: list[Path] = []
    others: list[Path] = []
    folders: list[Path] = []
    top = os.fspath(root)
    # each folder (as os.walk names it): the real paths from root down to it
    ancestors: dict[str, tuple[str, ...]] = {top: (os.path.realpath(top),)}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            sub = os.path.join(dirpath, d)  # the name os.walk gives it as dirpath
            real = os.path.realpath(sub)
            if real in ancestors[dirpath]:
                raise DataError(f"{sub}: links back to a folder that contains it (a cycle)")
            ancestors[sub] = ancestors[dirpath] + (real,)
        folders += [here / d for d in dirnames]
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            (images if is_image_name(Path(name)) else others).append(here / name)
    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    return sorted(images, key=rel), sorted(others, key=rel), sorted(folders, key=rel)


def scan_image_folder(root: Path, class_cond: bool) -> tuple[list[Path], list[int], list[str]]:
    """``(files, labels, classes)`` of the folder ``root`` by the rules of the module docstring.

    Raises :class:`DataError` (one line naming the folder or file); warns about skipped non-image files.
    """
    if not root.is_dir():
        raise DataError(f"data.path: folder {str(root)!r} does not exist")
    images, others, folders = _walk(root)
    if others:
        names = ", ".join(p.relative_to(root).as_posix() for p in others[:3])
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        warnings.warn(f"{root}: skipped {len(others)} file(s) that are not images by suffix ({names}{more}); "
                      f"image suffixes: {', '.join(IMAGE_SUFFIXES)}", UserWarning, stacklevel=3)
    if not images:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in data.path or its subfolders")
    for path in images:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: cannot read image: empty file (0 bytes)")
    if not class_cond:
        return images, [0] * len(images), [UNLABELED]

    loose = [p for p in images if p.parent == root]
    if loose:
        raise DataError(f"{loose[0]}: image directly in data.path ({len(loose)} such); with data.class_cond: "
                        "true every image goes in a class subfolder (or set data.class_cond: false)")
    classes = [p.name for p in folders if p.parent == root]
    class_of = {name: i for i, name in enumerate(classes)}
    labels = [class_of[p.relative_to(root).parts[0]] for p in images]
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        others_msg = f" ({len(empty) - 1} more empty: {', '.join(empty[1:4])}{', ...' if len(empty) > 4 else ''})" \
            if len(empty) > 1 else ""
        raise DataError(f"{root / empty[0]}: class folder has no images{others_msg}; classes are numbered by "
                        "sorted folder name, so an empty one would shift the labels of the later ones -- add "
                        "images or remove the folder")
    return images, labels, classes


class ImageFolder(Dataset):
    """Images ``float [3, image_size, image_size]`` in ``[-1, 1]`` with their class label (0 when not
    ``class_cond``). ``classes``: the class folder names in label order; ``num_classes == len(classes)``;
    ``class_index``: name -> label.

    Raises :class:`DataError` as listed in the module docstring.
    """

    def __init__(self, path: str, image_size: int, class_cond: bool = True, random_flip: bool = True,
                 split: str = "train", heldout_fraction: float = 0.0):
        self.root = Path(path)
        files, labels, self.classes = scan_image_folder(self.root, class_cond)
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be train or heldout, got {split!r}")
        if heldout_fraction > 0 or split == "heldout":
            want = split == "heldout"
            keep = [is_heldout(p.relative_to(self.root).as_posix(), heldout_fraction) == want for p in files]
            files = [p for p, k in zip(files, keep) if k]
            labels = [y for y, k in zip(labels, keep) if k]
            if not files:
                raise DataError(f"data.path: no {split} images under {path!r} with data.heldout_fraction "
                                f"{heldout_fraction:g} (held-out images are picked by a hash of their path; "
                                f"allowed: a fraction in [0, 1) that leaves both splits non-empty)")
        self.files, self.labels = files, labels
        self.num_classes = len(self.classes)
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        self.class_cond = class_cond
        self.image_size = image_size
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        arr = center_crop_arr(read_rgb(self.files[index]), self.image_size)
        if self.random_flip and torch.rand(()) < 0.5:
            arr = arr[:, ::-1]
        image = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1).permute(2, 0, 1).contiguous()
        return image, self.labels[index]


@hookimpl
def dtr_register_datasets(register):
    register("image_folder", ImageFolder, params=ImageFolderParams,
             description="images in class subfolders, ADM centre crop and random flip")
