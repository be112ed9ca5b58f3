"""Reference statistics (features per layer, FID mean and covariance) and their cache on disk.

An entry is two files in the cache folder (``cache_dir``, default ``$DTR_CACHE_DIR/reference-stats``):

- ``<slug>-<id>.npz``: the arrays, written by ``numpy.savez`` and read with ``allow_pickle=False``, so a
  cache file can hold numbers only and never runs code when read; keys ``features__<layer>`` (``float32
  [N, D]``), ``fid_mu__<layer>`` (``[D]``) and ``fid_sigma__<layer>`` (``[D, D]``);
- ``<slug>-<id>.json``: what the entry is (its full key, the number and size of the reference images, the
  array names and the npz's size), written last: an entry without it is not used.

``<id>`` is the first 16 hex digits of the SHA-256 of the key, and the key is the reference's content identity
(:attr:`~dtr_plugins.evaluation.references.Reference.key`), the feature extractor's name and weights'
SHA-256, torch-fidelity's version and the extractor options. An entry that is unreadable, holds pickled data,
or does not match its key is ignored with a warning and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtr_plugins.core.io import atomic_write, write_json

FORMAT_VERSION = 1


@dataclass
class ReferenceStats:
    """Everything the metrics need from the reference: ``num_images``, ``image_size`` (H, W),
    ``features`` (layer -> ``float [N, D]`` tensor) and ``fid`` (layer -> ``{"mu": [D], "sigma": [D, D]}``)."""

    num_images: int
    image_size: tuple[int, int]
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    fid: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def covers(self, feature_layers: set[str], fid_layers: set[str]) -> bool:
        return feature_layers <= set(self.features) and fid_layers <= set(self.fid)

    def merged(self, other: ReferenceStats | None) -> ReferenceStats:
        """This entry plus what ``other`` (the same reference) has and this one lacks."""
        if other is None or other.num_images != self.num_images:
            return self
        return ReferenceStats(self.num_images, self.image_size, {**other.features, **self.features},
                              {**other.fid, **self.fid})


def fid_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` of ``features [N, D]`` (torch-fidelity's
    ``fid_features_to_statistics``, as in the TTUR reference implementation of FID)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features.cpu())


class StatsCache:
    """The reference-statistics cache in ``root``; ``enabled=False`` makes every lookup a miss and saves nothing."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root = Path(root).expanduser()
        self.enabled = enabled

    @staticmethod
    def entry_name(slug: str, key: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', slug)[:60]}-{digest}"

    def load(self, name: str, key: dict[str, Any]) -> ReferenceStats | None:
        """The entry ``name`` if it exists, matches ``key`` and reads as plain arrays; else ``None``."""
        if not self.enabled:
            return None
        meta_path, npz_path = self.root / f"{name}.json", self.root / f"{name}.npz"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT_VERSION or meta.get("key") != json.loads(json.dumps(key)):
                raise ValueError("its key differs")
            if npz_path.stat().st_size != meta["npz_bytes"]:
                raise ValueError("its .npz does not match its .json")
            with np.load(npz_path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in meta["arrays"]}
            return _unpack(arrays, int(meta["num_images"]), tuple(meta["image_size"]))
        except Exception as exc:  # noqa: BLE001 - unreadable, pickled, truncated or foreign: recompute
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"reference statistics cache {npz_path}: ignored ({text}); recomputing", stacklevel=3)
            return None

    def save(self, name: str, key: dict[str, Any], stats: ReferenceStats, reference: str) -> None:
        """Write the entry (arrays first, then its ``.json``; each atomically)."""
        if not self.enabled:
            return
        arrays = _pack(stats)
        npz_path = self.root / f"{name}.npz"
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(npz_path, lambda tmp: _savez(tmp, arrays))
        write_json(self.root / f"{name}.json", {
            "format": FORMAT_VERSION, "reference": reference, "key": key, "num_images": stats.num_images,
            "image_size": list(stats.image_size), "arrays": sorted(arrays), "npz_bytes": npz_path.stat().st_size})


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle's bool


def _pack(stats: ReferenceStats) -> dict[str, np.ndarray]:
    arrays = {f"features__{layer}": f.cpu().numpy() for layer, f in stats.features.items()}
    for layer, st in stats.fid.items():
        arrays[f"fid_mu__{layer}"], arrays[f"fid_sigma__{layer}"] = st["mu"], st["sigma"]
    return arrays


def _unpack(arrays: dict[str, np.ndarray], num_images: int, image_size: tuple[int, int]) -> ReferenceStats:
    stats = ReferenceStats(num_images, image_size)
    for name, arr in arrays.items():
        kind, _, layer = name.partition("__")
        if arr.dtype == object:
            raise ValueError(f"{name} is not numeric")
        if kind == "features":
            if arr.ndim != 2 or len(arr) != num_images:
                raise ValueError(f"{name} has shape {list(arr.shape)}, expected [{num_images}, D]")
            stats.features[layer] = torch.from_numpy(arr)
        elif kind in ("fid_mu", "fid_sigma"):
            stats.fid.setdefault(layer, {})["mu" if kind == "fid_mu" else "sigma"] = arr
        else:
            raise ValueError(f"unexpected array {name}")
    for layer, st in stats.fid.items():
        if set(st) != {"mu", "sigma"} or st["sigma"].shape != (len(st["mu"]), len(st["mu"])):
            raise ValueError(f"FID statistics of layer {layer} are incomplete")
    return stats
