"""Pictures: mask heatmaps, sample grids and metric curves (matplotlib, Agg backend, atomic writes)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dtr_plugins.core.io import save_figure  # noqa: E402
from dtr_plugins.core.routing import RoutingPlan  # noqa: E402


def _layer_label(layers: Sequence[int]) -> str:
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ",".join(map(str, layers))


def plot_routing_plan(plan: RoutingPlan, path: str | Path, title: str = "", max_tables: int = 8) -> Path:
    """One heatmap per distinct mask table: timestep on the y axis (t=0 at the bottom), channel on x."""
    tables = plan.tables()
    if not tables:  # vanilla: draw the all-active table once so the picture still says something
        channels = plan.layer_channels[0] if plan.layer_channels else 1
        tables = [(torch.ones(plan.num_tasks, channels, dtype=torch.bool), list(range(len(plan.layer_channels))))]
    shown = tables[:max_tables]
    cols = min(len(shown), 4)
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (table, layers) in zip(axes.flat, shown):
        img = table.to(torch.uint8).cpu().numpy()
        ax.imshow(img, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        ax.set_xlabel(f"channel (C = {table.shape[1]})")
        ax.set_ylabel(f"timestep t (T = {table.shape[0]})")
        share = img.mean()
        ax.set_title(f"{_layer_label(layers)}  ({share:.0%} active)", fontsize=9)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    more = f"  (+{len(tables) - len(shown)} more tables)" if len(tables) > len(shown) else ""
    fig.suptitle((title or plan.strategy_repr) + more + "\nblack = channel active for that timestep", fontsize=10)
    fig.tight_layout()
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out


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
