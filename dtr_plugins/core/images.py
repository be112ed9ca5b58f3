"""Images: the one value convention (model space is floats in [-1, 1], files and metrics use uint8) and the
uint8 grids that training, sampling and reports show (pure numpy / PIL; no plotting library)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> ``uint8`` as ``round((x + 1) * 127.5)``, clamped to 0..255; layout unchanged."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC image (grayscale kept as 3 channels)."""
    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return grid


#: one colour convention for every picture of a routing mask (the trackers' ``routing/masks`` image, ``dtr masks``,
#: the reports' mask heatmaps): RGB of a unit that runs at a timestep, of a masked unit, of the gap between tables
MASK_ACTIVE = (33, 102, 172)
MASK_MASKED = (235, 235, 235)
MASK_GAP = (214, 39, 40)


def mask_rgb(table: torch.Tensor | np.ndarray) -> np.ndarray:
    """A mask table ``bool [T, C]`` (True = unit active) as ``uint8 [T, C, 3]`` in :data:`MASK_ACTIVE` /
    :data:`MASK_MASKED`; row ``t`` is timestep ``t`` (a picture with t = 0 at the bottom flips it or draws it
    with ``origin="lower"``)."""
    active = np.asarray(table.detach().cpu() if isinstance(table, torch.Tensor) else table).astype(bool)
    if active.ndim != 2:
        raise ValueError(f"a mask table is [T, C], got shape {tuple(active.shape)}")
    return np.where(active[:, :, None], np.array(MASK_ACTIVE, np.uint8), np.array(MASK_MASKED, np.uint8))


#: smallest side of one cell of a readable sample grid, in pixels (images are enlarged by a whole factor)
MIN_CELL = 64


def enlarge(image: np.ndarray, min_side: int = MIN_CELL) -> np.ndarray:
    """uint8 HWC -> uint8 HWC enlarged by the smallest whole factor that makes both sides >= ``min_side``
    (nearest neighbour: each pixel becomes a block, nothing is smoothed)."""
    from PIL import Image

    h, w = image.shape[:2]
    factor = max(1, -(-min_side // max(1, min(h, w))))
    if factor == 1:
        return image
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    big = np.asarray(pil.resize((w * factor, h * factor), Image.Resampling.NEAREST))
    return big[..., None] if big.ndim == 2 else big


def _caption_font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def readable_grid(images: np.ndarray, labels: Sequence[int] | np.ndarray | None = None,
                  class_names: Sequence[str] | None = None, *, nrow: int | None = None,
                  min_cell: int = MIN_CELL, pad: int = 2) -> np.ndarray:
    """Sample grid meant for eyes: uint8 NHWC ``[N, H, W, C]`` -> one uint8 HWC RGB image.

    Each image is enlarged (nearest neighbour, :func:`enlarge`) to at least ``min_cell`` pixels a side; with
    ``class_names`` each cell gets the name of its label (``labels[i]``) in a strip above it. Columns default to
    the number of classes when that is at most 16 and there are that many images (samples made with balanced
    labels then hold one class per column), else to a square. Tiled by ``torchvision.utils.make_grid`` on white.
    """
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    n = len(images)
    if n == 0:
        raise ValueError("no images to tile")
    captions = None
    if class_names is not None and labels is not None:
        captions = [class_names[int(y)] if 0 <= int(y) < len(class_names) else str(int(y)) for y in labels[:n]]
    cells = [enlarge(img, min_cell) for img in images]
    cells = [np.repeat(c, 3, axis=-1) if c.shape[-1] == 1 else c[..., :3] for c in cells]
    if captions is not None:
        height = max(16, cells[0].shape[0] // 4)
        font = _caption_font(int(height * 0.75))
        tiles = []
        for cell, text in zip(cells, captions):
            tile = Image.new("RGB", (cell.shape[1], cell.shape[0] + height), "white")
            tile.paste(Image.fromarray(cell), (0, height))
            ImageDraw.Draw(tile).text((cell.shape[1] / 2, height / 2), text, fill="black", font=font, anchor="mm")
            tiles.append(np.asarray(tile))
        cells = tiles
    if nrow is None:
        k = len(class_names) if class_names is not None else 0
        nrow = k if captions is not None and 1 < k <= 16 and n >= k else int(np.ceil(np.sqrt(n)))
    batch = torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2)
    grid = make_grid(batch, nrow=nrow, padding=pad, pad_value=255)
    return np.asarray(grid.permute(1, 2, 0).numpy(), dtype=np.uint8)
