"""Captioned image files: ``coco_captions`` (MS-COCO's caption annotations) and ``image_text`` (a folder with a
``captions.jsonl``). docs/text_to_image.md.

Both give items ``(image, item index)``: ``image`` float ``[3, image_size, image_size]`` in ``[-1, 1]``, the label
the item's index (``SupportsCaptions``: ``caption_sets()[i]`` are item ``i``'s captions, one drawn per training
step by the text stage from the run's seed, rank and step). ``num_classes`` is 1 (no class labels).

- ``coco_captions``: ``annotations`` is a COCO captions file (``captions_train2014.json``: ``images`` with ``id``
  and ``file_name``, ``annotations`` with ``image_id``, ``id`` and ``caption``); ``images`` the folder of the
  files. Items are the images with at least one caption, in increasing image id; an image's captions in
  increasing annotation id (U-ViT's ``MSCOCODatabase`` order: 82,783 train2014 images, 40,504 val2014).
- ``image_text``: ``path/captions.jsonl``, one JSON object per line, ``{"file": "relative/path.png", "text":
  "..."}`` or ``{"file": ..., "captions": ["...", ...]}``; lines naming the same file add captions to it. Items
  in order of first appearance.

Preprocessing (``resize``): ``lanczos`` (default, U-ViT's MS-COCO ``center_crop``: the centred square of the
shorter side, resized with LANCZOS) or ``adm`` (ADM's ``center_crop_arr``: BOX halvings, BICUBIC, centre crop).
``random_flip`` (default off, as U-ViT's MS-COCO features) mirrors with probability 1/2 (one ``torch.rand``).
Every mistake in the annotation file or a missing image is one :class:`DataError` line naming the file.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from dtr_plugins.core.decode import read_rgb
from dtr_plugins.core.errors import DataError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.data.image_folder import center_crop_arr

Resize = Literal["lanczos", "adm"]


def lanczos_center_crop(image: Image.Image, image_size: int) -> np.ndarray:
    """The centred square of the shorter side, resized to ``image_size`` with LANCZOS: ``uint8 [S, S, 3]``."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((image_size, image_size), resample=Image.Resampling.LANCZOS))


class _CaptionedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = Field(256, ge=8, description="side length of the centre-cropped square")
    random_flip: bool = Field(False, description="horizontal flips (off: U-ViT's MS-COCO features have none)")
    resize: Resize = Field("lanczos", description="lanczos: U-ViT's MS-COCO crop and resize; adm: ADM's")
    limit: int | None = Field(None, ge=1, description="only the first N items (a quick look or a test)")

    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @classmethod
    def with_image_size(cls, params: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        return {"image_size": height, **params} if height == width else params

    def random_hflip(self) -> bool:
        return self.random_flip

    def unaugmented(self) -> Any:
        return self.model_copy(update={"random_flip": False})

    def _items(self) -> tuple[list[Path], list[list[str]]]:
        raise NotImplementedError

    def caption_sets(self) -> list[list[str]]:
        """Item ``i`` -> its captions (``SupportsCaptions``)."""
        return self._items()[1]


class CocoCaptionsParams(_CaptionedParams):
    images: str = Field(description="folder of the images (e.g. coco/train2014)")
    annotations: str = Field(description="COCO captions file (e.g. coco/annotations/captions_train2014.json)")

    def content_key(self) -> dict[str, Any]:
        """The params with both paths resolved (``SupportsContentKey``)."""
        return {**self.model_dump(mode="json"), "images": _resolved(self.images),
                "annotations": _resolved(self.annotations)}

    def _items(self) -> tuple[list[Path], list[list[str]]]:
        names, captions = _read_coco(_resolved(self.annotations), *_stamp(self.annotations))
        files = [Path(self.images).expanduser() / n for n in names]
        return files[:self.limit], captions[:self.limit]


class ImageTextParams(_CaptionedParams):
    path: str = Field(description="folder of the images and their captions file")
    captions_file: str = Field("captions.jsonl", description="JSON lines in path: {file, text} or {file, captions}")

    def content_key(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json"), "path": _resolved(self.path)}

    def _items(self) -> tuple[list[Path], list[list[str]]]:
        file = Path(self.path).expanduser() / self.captions_file
        names, captions = _read_jsonl(_resolved(str(file)), *_stamp(str(file)))
        files = [Path(self.path).expanduser() / n for n in names]
        return files[:self.limit], captions[:self.limit]


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = Path(path).expanduser().stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the captions file: {exc.strerror or type(exc).__name__}") from None
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _read_coco(path: str, size: int, mtime_ns: int) -> tuple[list[str], list[list[str]]]:
    """``(file names, captions per image)``, images in increasing id (see the module docstring)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        anns = sorted((int(a["image_id"]), int(a["id"]), str(a["caption"]).strip()) for a in data["annotations"])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable COCO captions file ({type(exc).__name__})") from None
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a COCO captions file (images need id and file_name, annotations image_id, id "
                        f"and caption; missing {exc})") from None
    captions: dict[int, list[str]] = {}
    for image_id, _, caption in anns:
        if image_id not in files:
            raise DataError(f"{path}: an annotation names image_id {image_id}, which is not in images")
        captions.setdefault(image_id, []).append(caption)
    ids = sorted(captions)
    if not ids:
        raise DataError(f"{path}: no captions")
    return [files[i] for i in ids], [captions[i] for i in ids]


@functools.lru_cache(maxsize=4)
def _read_jsonl(path: str, size: int, mtime_ns: int) -> tuple[list[str], list[list[str]]]:
    order: dict[str, list[str]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the captions file ({type(exc).__name__})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            name = item["file"]
            texts = item["captions"] if "captions" in item else [item["text"]]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{number}: expected {{\"file\": ..., \"text\": ...}} or {{\"file\": ..., "
                            f"\"captions\": [...]}}") from None
        parts = PurePosixPath(str(name)).parts
        if not isinstance(name, str) or not name or name.startswith("/") or ".." in parts:
            raise DataError(f"{path}:{number}: file {name!r} must be a relative path inside the folder")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{path}:{number}: captions must be text (a list of at least one)")
        order.setdefault(name, []).extend(t.strip() for t in texts)
    if not order:
        raise DataError(f"{path}: no captions")
    return list(order), list(order.values())


class CaptionedImageFiles(Dataset):
    """Image files with their captions (in the params model): items ``(image, item index)``."""

    num_classes = 1

    def __init__(self, files: list[Path], image_size: int, random_flip: bool, resize: str):
        self.files, self.image_size, self.random_flip, self.resize = files, image_size, random_flip, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = read_rgb(self.files[index])  # a missing or broken file: one DataError naming it
        crop = lanczos_center_crop if self.resize == "lanczos" else center_crop_arr
        arr = crop(image, self.image_size)
        if self.random_flip and torch.rand(()) < 0.5:
            arr = arr[:, ::-1]
        return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1).permute(2, 0, 1).contiguous(), int(index)


def coco_captions(**params: Any) -> CaptionedImageFiles:
    """MS-COCO images with their caption annotations."""
    p = CocoCaptionsParams(**params)
    return CaptionedImageFiles(p._items()[0], p.image_size, p.random_flip, p.resize)


def image_text(**params: Any) -> CaptionedImageFiles:
    """A folder of images with a captions.jsonl."""
    p = ImageTextParams(**params)
    return CaptionedImageFiles(p._items()[0], p.image_size, p.random_flip, p.resize)


@hookimpl
def dtr_register_datasets(register):
    register("coco_captions", coco_captions, params=CocoCaptionsParams,
             description="MS-COCO images with their captions (annotation JSON + image folder), U-ViT's crop")
    register("image_text", image_text, params=ImageTextParams,
             description="a folder of images with captions.jsonl ({file, text} per line)")
