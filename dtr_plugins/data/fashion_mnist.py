"""``fashion_mnist``: Zalando's Fashion-MNIST (70,000 28x28 grayscale garments, 10 classes), read from disk.

No download: the four original IDX files come from Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``; they land in :data:`DEBIAN_PATH`, gzip-compressed) or from the
folder torchvision's ``FashionMNIST(root, download=True)`` fills (``root/FashionMNIST/raw``, uncompressed).
``data.path`` may name either folder, or the ``root`` above ``FashionMNIST/``; each file is looked up as
``NAME`` and ``NAME.gz``. Files are parsed by torchvision's IDX reader
(:func:`torchvision.datasets.mnist.read_sn3_pascalvincent_tensor`); gzip-compressed ones are decompressed in
memory first. A missing file is one :class:`~dtr_plugins.core.errors.DataError` line naming the folders
searched and the package that provides them.

Splits are the data set's own: ``train`` (60,000 images) and ``test`` (10,000). ``heldout`` is the ``test``
split under the name the held-out loss asks for: it is never trained on and it is the FID reference.

Items: ``(image, label)`` with ``image`` float ``[channels, image_size, image_size]`` in ``[-1, 1]``
(``2 * pixel / 255 - 1``; 28 is native, other sizes resize bilinearly) and ``label`` in ``0..9``
(:data:`CLASSES` names them, as the data set's documentation does).
"""
from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from dtr_plugins.core.errors import DataError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.data.square import SquareImageParams, SquareImages

#: where Debian's ``dataset-fashion-mnist`` installs the IDX files
DEBIAN_PATH = "/usr/share/datasets/fashion-mnist"
#: label i is CLASSES[i] (the data set's own naming)
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: split -> (images file, labels file), without the ``.gz`` suffix
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
#: images per split in the original release
SIZES = {"train": 60000, "test": 10000}
INSTALL_HINT = "install them with `apt-get install dataset-fashion-mnist` or set data.path"


class FashionMNISTParams(SquareImageParams):
    HELDOUT: ClassVar[str] = "test"  # the data set's own test split is the held-out set
    path: str = Field(DEBIAN_PATH, description="folder of the IDX files (Debian's, or torchvision's download root)")
    image_size: int = Field(28, ge=8, description="side length; 28 is native, other sizes resize bilinearly")
    channels: Literal[1, 3] = 1
    split: Literal["train", "test", "heldout"] = Field(
        "train", description="train: the 60,000 training images; test (also called heldout): the 10,000 test images")
    random_flip: bool = Field(False, description="horizontal flips (garments are roughly mirror-symmetric)")

    def content_key(self) -> dict[str, Any]:
        """The params with ``path`` as its resolved absolute folder (``SupportsContentKey``: latent caches of
        ``./data`` and ``/abs/data`` are one)."""
        return {**self.model_dump(mode="json"), "path": str(Path(self.path).expanduser().resolve())}


def candidate_folders(path: str | os.PathLike[str]) -> list[Path]:
    """The folders searched for the IDX files, in order: ``path``, ``path/raw``, ``path/FashionMNIST/raw``."""
    root = Path(path).expanduser()
    return [root, root / "raw", root / "FashionMNIST" / "raw"]


def find_file(path: str | os.PathLike[str], name: str) -> Path:
    """The file ``name`` (or ``name.gz``) in the first folder of :func:`candidate_folders` that holds it.

    Raises :class:`DataError` naming the folders searched and how to install the files."""
    for folder in candidate_folders(path):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"data.path: Fashion-MNIST file {name}[.gz] not found in {Path(path).expanduser()} "
                    f"(nor its raw/ or FashionMNIST/raw/); {INSTALL_HINT}")


def read_idx(file: Path) -> torch.Tensor:
    """An IDX file (gzip-compressed or not) as a tensor, through torchvision's reader.

    Raises :class:`DataError` naming the file when it is not a valid IDX file (empty, cut short, another format)."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
    except (OSError, EOFError) as err:
        raise DataError(f"data.path: {file} is not a readable IDX file ({type(err).__name__}: {err})") from err
    if len(raw) < 4 or raw[:2] != b"\0\0":  # an IDX file starts with two zero bytes, a type code and a rank
        what = "it is empty" if not raw else \
            f"its first {min(len(raw), 4)} bytes are not an IDX header: 00 00, type, rank"
        raise DataError(f"data.path: {file} is not an IDX file ({what}); reinstall it with apt-get install "
                        f"--reinstall dataset-fashion-mnist")
    try:
        if file.suffix != ".gz":
            return read_sn3_pascalvincent_tensor(str(file), strict=False)
        with tempfile.TemporaryDirectory(prefix="dtr-idx-") as tmp:  # the reader takes a path
            plain = Path(tmp) / file.stem
            plain.write_bytes(raw)
            return read_sn3_pascalvincent_tensor(str(plain), strict=False)
    except (OSError, EOFError, ValueError, RuntimeError, KeyError, AssertionError) as err:
        raise DataError(f"data.path: {file} is not a readable IDX file ({type(err).__name__}: {err})") from err


def load_split(path: str | os.PathLike[str], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of ``split`` (``train`` or ``test``).

    Raises :class:`DataError` when a file is missing or unreadable, or images and labels disagree in count."""
    images_name, labels_name = FILES[split]
    images = read_idx(find_file(path, images_name))
    labels = read_idx(find_file(path, labels_name)).long()
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"data.path: Fashion-MNIST {split} files disagree: images {tuple(images.shape)}, "
                        f"labels {tuple(labels.shape)} (expected [N, 28, 28] and [N])")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(CLASSES)):
        raise DataError(f"data.path: Fashion-MNIST {split} labels outside 0..9 in {find_file(path, labels_name)}")
    return images, labels


class FashionMNIST(SquareImages):
    """Images in [-1, 1] as float ``[channels, image_size, image_size]`` with their class label (0..9)."""

    num_classes = len(CLASSES)
    classes = CLASSES

    def __init__(self, path: str = DEBIAN_PATH, image_size: int = 28, channels: int = 1, split: str = "train",
                 random_flip: bool = False):
        images, labels = load_split(path, "test" if split == "heldout" else split)
        pixels = images.unsqueeze(1).float().div(255.0).mul(2).sub(1)  # [N, 1, 28, 28] in [-1, 1]
        super().__init__(pixels, labels, image_size, channels, random_flip)


@hookimpl
def dtr_register_datasets(register):
    register("fashion_mnist", FashionMNIST, params=FashionMNISTParams,
             description="Fashion-MNIST 28x28 from local IDX files (apt-get install dataset-fashion-mnist); "
                         "split train / test (= heldout)")
