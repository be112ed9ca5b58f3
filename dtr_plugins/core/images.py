"""The one image value convention: model space is floats in [-1, 1], files and metrics use uint8."""
from __future__ import annotations

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> ``uint8`` as ``round((x + 1) * 127.5)``, clamped to 0..255; layout unchanged."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
