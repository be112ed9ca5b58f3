"""Image files -> 8-bit RGB: one decoder for training data and evaluation inputs.

Every Pillow mode a file can open in is mapped to ``uint8`` RGB by its meaning, not by Pillow's
``convert("RGB")`` alone (which saturates 16-bit and float images at 255):

=============================  ===========================================================================
mode                           decoded as
=============================  ===========================================================================
``RGB``, ``L``, ``1``          as stored (``L`` and ``1`` repeated on three channels; ``1`` -> 0 / 255)
``P`` (palette)                its palette colours
``YCbCr``                      Pillow's JPEG (JFIF, full range) conversion
``CMYK``                       ``R = (255 - C) * (255 - K) / 255`` (Pillow's conversion; no ICC profile)
``I;16``, ``I;16B/L/N``        16-bit unsigned: ``round(v / 257)`` (``65535 -> 255``, ``32768 -> 128``)
``I`` (32-bit integer)         read on the 16-bit scale ``0..65535`` like ``I;16`` (16-bit PNG and TIFF
                               data open as ``I`` in some Pillow versions); values outside are refused
``F`` (32-bit float)           read on the scale ``[0, 1]``: ``round(v * 255)``; values outside, NaN or
                               infinity are refused
alpha: ``RGBA``, ``LA``,       composited on white: ``round((c * a + 255 * (255 - a)) / 255)`` -- what an
``PA``, ``P``/``L``/``RGB``    image viewer shows; the colour under a fully transparent pixel is undefined
with a transparency key        in most files, so dropping alpha would train on it
anything else                  refused (``DataError`` naming the file and the mode)
=============================  ===========================================================================

The first frame of an animated file is used; EXIF orientation and ICC profiles are not applied (pixel
values as stored, like ADM's and torchvision's loaders). Every error is a one-line :class:`DataError`
that names the file: an empty (0-byte) file, a file Pillow cannot identify, a truncated or corrupt one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dtr_plugins.core.errors import DataError, first_line

#: bumped whenever decoded pixel values change; part of the content key of cached reference statistics
DECODER_VERSION = 2
#: file name suffixes read as images (lower case)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")

_AS_IS = {"RGB", "L", "1", "P", "YCbCr", "CMYK"}
_ALPHA = {"RGBA", "LA", "PA", "La", "RGBa"}


def is_image_name(path: Path) -> bool:
    """Does ``path``'s suffix (any case) name an image format of :data:`IMAGE_SUFFIXES`?"""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    arr = np.asarray(rgba.convert("RGBA"), dtype=np.uint32)
    rgb, alpha = arr[..., :3], arr[..., 3:]
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255  # integer round half up
    return Image.fromarray(out.astype(np.uint8), mode="RGB")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(gray.astype(np.uint8), mode="L").convert("RGB")


def to_rgb(img: Image.Image, where: str) -> Image.Image:
    """A decoded Pillow image as an 8-bit ``RGB`` image by the table of the module docstring.

    ``where`` (the file) names it in errors. Raises :class:`DataError` for unsupported modes and for
    integer / float values outside their scale.
    """
    mode = img.mode
    if mode in _ALPHA or (mode in {"P", "L", "RGB"} and "transparency" in img.info):
        return _composite_on_white(img)
    if mode == "RGB":
        return img
    if mode in _AS_IS:
        return img.convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(f"{where}: {mode} image has values {lo}..{hi}; only the 16-bit range 0..65535 "
                            "can be read")
        return _gray_to_rgb((arr * 255 + 32767) // 65535)  # = round(v / 257)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
            found = f"{np.nanmin(arr):g}..{np.nanmax(arr):g}" if np.isfinite(arr).any() else "no finite values"
            nonfinite = "" if np.isfinite(arr).all() else " and NaN/infinity"
            raise DataError(f"{where}: float (F) image has values {found}{nonfinite}; float images are read on "
                            "the scale [0, 1]")
        return _gray_to_rgb(np.floor(arr * 255 + 0.5))
    raise DataError(f"{where}: image mode {mode!r} is not supported (supported: 1, L, P, RGB, RGBA, LA, PA, "
                    "CMYK, YCbCr, I;16, I, F)")


def image_header(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding the pixels; :class:`DataError` for
    an empty file or one Pillow cannot identify."""
    path = Path(path)
    _check_not_empty(path)
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # noqa: BLE001 - any failure of a user file is that file's fault
        raise _unreadable(path, exc) from None


def read_rgb(path: Path) -> Image.Image:
    """The file at ``path`` fully decoded as an 8-bit ``RGB`` image (see the module docstring).

    Raises :class:`DataError` naming the file: empty, not an image, truncated or corrupt, unsupported
    mode or out-of-range values.
    """
    path = Path(path)
    _check_not_empty(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated or corrupt file fails here, not halfway through a resize
            return to_rgb(img, str(path)).copy()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a user file is that file's fault
        raise _unreadable(path, exc) from None


def read_rgb_array(path: Path) -> np.ndarray:
    """:func:`read_rgb` as a ``uint8`` array ``[H, W, 3]``."""
    return np.asarray(read_rgb(path))


def _check_not_empty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read image: {exc.strerror or first_line(exc)}") from None
    if size == 0:
        raise DataError(f"{path}: cannot read image: empty file (0 bytes)")


def _unreadable(path: Path, exc: BaseException) -> DataError:
    if isinstance(exc, UnidentifiedImageError):
        return DataError(f"{path}: cannot read image: not a format Pillow knows, or corrupt")
    return DataError(f"{path}: cannot read image: truncated or corrupt ({first_line(exc)})")
