"""Evaluation inputs: image folders, ``.npz`` files, ``uint8`` arrays and dataset plugins as one :class:`ImageSet`.

Every input is served to the feature extractor as ``uint8`` RGB tensors ``[3, H, W]`` (torch-fidelity's input
format); grayscale is expanded to RGB. All images of one input must share one size. Image files are decoded
by :mod:`dtr_plugins.core.decode` (16-bit and float images scaled, not clipped; alpha composited on white).

- A folder is read recursively (class subfolders, as in the ``image_folder`` layout), in sorted path order;
  files and folders whose names start with ``.`` are skipped.
- An ``.npz`` follows the ADM / guided-diffusion evaluator layout: ``arr_0`` holds ``uint8`` NHWC images;
  the class each sample was generated for is read from ``labels`` (what ``dtr sample`` writes) or, failing
  that, ``arr_1`` (what guided-diffusion's ``image_sample.py`` writes with ``np.savez(path, arr, label_arr)``).
- Dataset items (floats in [-1, 1]) become ``uint8`` as ``round((x + 1) * 127.5)``
  (:func:`dtr_plugins.core.images.to_uint8`).
"""
from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from dtr_plugins.core.decode import IMAGE_SUFFIXES, image_header, read_rgb_array
from dtr_plugins.core.errors import DataError
from dtr_plugins.core.images import to_uint8
from dtr_plugins.extractors.builtin import EvalError

#: npz keys that may hold the samples' class labels, in the order they are looked for
LABEL_KEYS = ("labels", "arr_1")
IN_MEMORY_LIMIT = 1 << 28  # dataset references up to 256 MiB of uint8 pixels are materialized


class ArrayImages(Dataset):
    """``uint8`` NHWC images in memory, served as ``uint8`` RGB ``[3, H, W]`` tensors."""

    def __init__(self, images: torch.Tensor):
        self.images = images  # [N, H, W, C], C in (1, 3)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index].permute(2, 0, 1)
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image.contiguous()


class FolderImages(Dataset):
    """Image files decoded on access, as ``uint8`` RGB ``[3, H, W]`` tensors; all must be ``size`` (H, W)."""

    def __init__(self, files: list[Path], size: tuple[int, int]):
        self.files = files
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        arr = read_rgb_array(path)
        if arr.shape[:2] != self.size:
            raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, the others {self.size[1]}x{self.size[0]}")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class DatasetImages(Dataset):
    """A dataset plugin's ``(image in [-1, 1], label)`` items as ``uint8`` RGB ``[3, H, W]`` tensors."""

    def __init__(self, dataset: Dataset, where: str):
        self.dataset = dataset
        self.where = where

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # every dataset plugin is sized (Dataset's stub is not)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.dataset[index]
        image = item[0] if isinstance(item, (tuple, list)) else item
        if not torch.is_tensor(image) or image.dim() != 3 or image.shape[0] not in (1, 3):
            shape = list(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise EvalError(f"{self.where}: items must be images [1 or 3, H, W] in [-1, 1], got {shape}")
        return to_uint8(image).expand(3, -1, -1).contiguous()


@dataclass
class ImageSet:
    """One evaluation input. ``labels``: the class of each image (``int64 [N]``) or ``None``;
    ``labels_from``: where they came from (an npz key, ``"argument"``) or ``None``."""

    dataset: Dataset  # uint8 RGB [3, H, W] items
    size: tuple[int, int]  # (H, W)
    labels: np.ndarray | None = None
    in_memory: bool = True
    source: str = "<array>"
    labels_from: str | None = None

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # every dataset plugin is sized (Dataset's stub is not)


def check_labels(labels: Any, n: int, where: str) -> np.ndarray | None:
    """``labels`` as ``int64 [n]``, or :class:`DataError` naming ``where``; ``None`` stays ``None``."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be {n} integers, got {labels.dtype} array of shape {list(labels.shape)}")
    return labels.astype(np.int64)


def array_images(arr: Any, where: str, labels: Any = None, labels_from: str | None = None) -> ImageSet:
    """``uint8`` NHWC (or NHW) images as an :class:`ImageSet`; bad dtypes or shapes raise :class:`DataError`."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 (NHWC, ADM layout), got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        hint = " (channels first? expected NHWC)" if arr.ndim == 4 and arr.shape[1] in (1, 3) else ""
        raise DataError(f"{where}: images must be NHWC with 1 or 3 channels, got shape {list(arr.shape)}{hint}")
    if len(arr) == 0:
        raise DataError(f"{where}: no images")
    label_where = f"{where} ({labels_from})" if labels_from and labels_from != "argument" else where
    return ImageSet(ArrayImages(torch.from_numpy(np.ascontiguousarray(arr))), (arr.shape[1], arr.shape[2]),
                    check_labels(labels, len(arr), label_where), True, where,
                    labels_from if labels is not None else None)


def npz_keys(path: Path) -> list[str]:
    """The array names in an ``.npz`` file, from its zip directory (no array is read). Raises
    :class:`DataError` naming the file when it is not a readable ``.npz`` (numpy's zip archive of ``.npy``
    arrays): a truncated download, a text file, a pickle."""
    try:
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not an .npz archive (numpy's zip of arrays, as np.savez writes); "
                            "a partial download or another format?")
        with np.load(path, allow_pickle=False) as data:
            return list(data.files)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged zip directory, an unreadable file
        raise DataError(f"{path}: cannot read .npz: {one_line(exc)}") from None


def npz_images(path: Path) -> ImageSet:
    """Images from ``arr_0`` (or the only array), labels from ``labels`` or ``arr_1`` (see the module docstring)."""
    keys = npz_keys(path)  # one clear line for a file that is no .npz at all
    try:
        with np.load(path, allow_pickle=False) as data:
            key = "arr_0" if "arr_0" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(f"{path}: no arr_0 array (keys: {', '.join(keys) or 'none'})")
            images = data[key]
            label_key = next((k for k in LABEL_KEYS if k in keys and k != key), None)
            labels = data[label_key] if label_key else None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - not a zip, truncated, object arrays...
        raise DataError(f"{path}: cannot read .npz: {one_line(exc)}") from None
    return array_images(images, str(path), labels, label_key)


def iter_image_files(root: Path) -> Iterator[Path]:
    """Image files under ``root`` at any depth, sorted by relative path, skipping names that start with ``.``."""
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            yield path


def folder_images(path: Path) -> ImageSet:
    """All images under ``path`` (recursively); headers are checked here, so a broken file fails at once."""
    files = list(iter_image_files(path))
    if not files:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or its subfolders")
    first = files[0]
    first_w, first_h = image_header(first)
    size = (first_h, first_w)
    for f in files[1:]:
        w, h = image_header(f)
        if (h, w) != size:
            raise DataError(f"{f}: image is {w}x{h} but {first.relative_to(path)} is {size[1]}x{size[0]}; all images "
                            f"of one input must share a size (for a folder of real images of any size, use "
                            f"dataset:image_folder?path=...&image_size=N&class_cond=false)")
    return ImageSet(FolderImages(files, size), size, None, False, str(path))


#: the files ``dtr sample`` writes into its output folder (beside ``images/`` and ``grid.png``)
SAMPLE_SET = ("samples.npz", "samples.json")


def sample_set_file(path: Path) -> Path:
    """A folder written by ``dtr sample`` stands for its ``samples.npz`` (the images with their labels and,
    beside it, how they were made); its ``grid.png`` is not a sample. Any other path is returned as given."""
    if path.is_dir() and all((path / name).is_file() for name in SAMPLE_SET):
        return path / SAMPLE_SET[0]
    return path


def load_images(source: Any, labels: Any = None) -> ImageSet:
    """Samples as an :class:`ImageSet`: a folder, an ``.npz`` or a ``uint8`` NHWC array; a folder written by
    ``dtr sample`` is read from its ``samples.npz`` (:func:`sample_set_file`).

    ``labels`` (``int [N]``) overrides labels stored in an npz. Raises :class:`DataError` (one line).
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        arr = source.cpu().numpy() if torch.is_tensor(source) else source
        return array_images(arr, "<array>", labels, "argument")
    path = sample_set_file(Path(source))
    if path.is_dir():
        images = folder_images(path)
    elif path.is_file() and path.suffix.lower() == ".npz":
        images = npz_images(path)
    elif path.exists():
        raise DataError(f"{path}: expected a folder of images or an .npz file")
    else:
        raise DataError(f"{path}: no such file or folder")
    if labels is not None:
        images.labels = check_labels(labels, len(images), str(path))
        images.labels_from = "argument"
    return images


def materialize(images: DatasetImages, label: str) -> tuple[Dataset, tuple[int, int], bool]:
    """A dataset plugin's images: stacked in memory when small (fast, no workers), else served lazily.

    Returns ``(dataset, (H, W), in_memory)``; an empty dataset or mixed sizes raise :class:`DataError`.
    """
    if len(images) == 0:
        raise DataError(f"reference {label}: the dataset is empty")
    first = images[0]
    size = (first.shape[1], first.shape[2])
    if len(images) * first.numel() <= IN_MEMORY_LIMIT:
        items = [first] + [images[i] for i in range(1, len(images))]
        if any(item.shape != first.shape for item in items):
            raise DataError(f"reference {label}: images differ in size")
        return ArrayImages(torch.stack(items).permute(0, 2, 3, 1)), size, True
    return images, size, False


def one_line(exc: BaseException) -> str:
    """The message of an error (also one raised inside a DataLoader worker) without the wrapper's traceback."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last) if len(lines) > 1 else last


def provenance_beside(source: Any) -> tuple[dict[str, Any], str] | None:
    """How an ``.npz`` of samples was made, from the JSON file beside it with the same stem (``dtr sample``
    writes ``samples.json`` beside ``samples.npz``): ``(dict, path)``, or ``None`` when there is none.

    A sidecar that is not a JSON object raises :class:`DataError` naming it.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return None
    path = sample_set_file(Path(source))
    if path.suffix.lower() != ".npz":
        return None
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    import json

    try:
        info = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{sidecar}: cannot read the samples' provenance: {one_line(exc)}") from None
    if not isinstance(info, dict):
        raise DataError(f"{sidecar}: the samples' provenance must be a JSON object, got {type(info).__name__}")
    return info, str(sidecar)
