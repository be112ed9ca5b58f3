"""An on-disk cache of a codec's posteriors, keyed by the codec's content.

``dtr cache-latents CONFIG`` encodes the dataset once (:func:`write_cache`, driven by
:func:`dtr_plugins.compose.cache_latents`). For every image it stores the normalised posterior
mean and std of the image and of its horizontal flip: a ``[2 (image, flip), 2 (mean, std), C, h, w]``
tensor. Items are written in shards of ``shard_size`` images (``shard-00000.pt`` ...) holding
``posterior`` ``[n, 2, 2, C, h, w]``, ``labels`` ``[n]`` and ``start``; each shard is written atomically,
so a shard that exists is complete and an interrupted run resumes where it stopped. ``manifest.json``
records what was encoded and says ``"complete": true`` once every shard is there. Under torchrun each
rank encodes every world-size-th shard.

The cache lives in ``<cache_dir or <output_dir>/latent_cache>/<dataset>-<size>px-<digest>``, the digest
being a hash of the key (:func:`cache_key`): dataset name and validated parameters with augmentation
off (the params model's ``unaugmented()``: both views are stored), image size, the codec's name and
fingerprint (for ``autoencoder_kl``: its weights files, config and normalisation, never its path) and the
storage dtype. Training reads it
through :class:`LatentCacheDataset`; :func:`draw_latents` turns a batch of cached posteriors into
``mean + std * noise`` of a random view per sample, on the device.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset

from dtr_plugins.core.contracts import Codec
from dtr_plugins.core.contracts import Dataset as ImageDataset
from dtr_plugins.core.errors import DataError, first_line
from dtr_plugins.core.io import save_torch, write_json
from dtr_plugins.core.log import show_progress

CACHE_FORMAT = "dtr-latent-cache/2"
MANIFEST = "manifest.json"

__all__ = ["CacheSettings", "cache_key", "cache_root", "write_cache", "LatentCacheDataset", "read_manifest",
           "draw_latents", "is_complete"]


@dataclass(frozen=True)
class CacheSettings:
    """Where and how a cache is stored (the ``vae`` / ``codec`` section's cache fields)."""

    cache_dir: str | None
    shard_size: int
    dtype: str  # "float32" or "float16"
    batch_size: int  # images per encode call while writing


def cache_key(data_name: str, data_params: dict[str, Any], image_size: int, codec_name: str, codec: Codec,
              dtype: str) -> dict[str, Any]:
    """What identifies a cache's content: dataset and what identifies its images with augmentation off (the
    caller passes the params model's ``content_key()`` where it has one, see ``SupportsContentKey``), image
    size, codec content, dtype."""
    params = dict(sorted(data_params.items()))
    return {"format": CACHE_FORMAT, "dataset": data_name, "params": params, "image_size": int(image_size),
            "codec": {"name": codec_name, "fingerprint": codec.fingerprint()}, "dtype": dtype}


def cache_root(base: Path, key: dict[str, Any]) -> Path:
    """``<base>/<dataset>-<size>px-<first 16 hex digits of the key's SHA-256>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(base) / f"{key['dataset']}-{key['image_size']}px-{digest}"


def shard_file(root: Path, index: int) -> Path:
    return root / f"shard-{index:05d}.pt"


def read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == CACHE_FORMAT else None


def is_complete(root: Path, key: dict[str, Any]) -> bool:
    manifest = read_manifest(root)
    return bool(manifest is not None and manifest.get("complete") and manifest.get("key") == key)


def _plan_fields(manifest: dict[str, Any]) -> tuple:
    return tuple(manifest.get(k) for k in ("key", "num_items", "shard_size", "latent_shape"))


def write_cache(root: Path, key: dict[str, Any], dataset: ImageDataset, codec: Codec, settings: CacheSettings, *,
                image_size: int, dist: Any, num_workers: int = 0, progress: bool = True,
                describe: dict[str, Any] | None = None) -> Path:
    """Encode ``dataset`` (read without random flips) into the cache at ``root``; resumable.

    ``dist``: a :class:`dtr_plugins.core.distributed.Dist` (rank, world size, device, barrier).
    """
    from tqdm.auto import tqdm

    n = len(dataset)
    if n == 0:
        raise DataError(f"data: dataset '{key['dataset']}' is empty")
    channels = int(dataset[0][0].shape[0])
    latent_shape = list(codec.latent_shape((channels, image_size, image_size)))
    shard_size = settings.shard_size
    num_shards = math.ceil(n / shard_size)
    plan = {"format": CACHE_FORMAT, "key": key, "num_items": n, "shard_size": shard_size, "num_shards": num_shards,
            "latent_shape": latent_shape, "dtype": settings.dtype,
            "layout": "posterior[n, view (image, hflip), (mean, std), C, h, w], normalised by the codec",
            "codec": describe or {}, "num_classes": dataset.num_classes}

    existing = read_manifest(root)
    all_there = all(shard_file(root, i).exists() for i in range(num_shards))
    if existing is not None and existing.get("complete") and _plan_fields(existing) == _plan_fields(plan) and all_there:
        return root

    d = dist
    if d.is_main:
        if existing is not None and _plan_fields(existing) != _plan_fields(plan):
            for old in root.glob("shard-*.pt"):  # encoded under another plan: start over
                old.unlink()
        write_json(root / MANIFEST, {**plan, "complete": False})
    d.barrier()
    mine = [i for i in range(num_shards) if i % d.world_size == d.rank]
    todo = [i for i in mine if not shard_file(root, i).exists()]
    size_of = lambda i: min(n, (i + 1) * shard_size) - i * shard_size  # noqa: E731
    bar = tqdm(total=sum(size_of(i) for i in mine), initial=sum(size_of(i) for i in mine if i not in todo),
               desc="cache-latents", unit="img", disable=not (show_progress(progress) and d.is_main),
               dynamic_ncols=True)
    dtype = getattr(torch, settings.dtype)
    batch_size = settings.batch_size
    batches = [list(range(lo, min(lo + batch_size, i * shard_size + size_of(i))))
               for i in todo for lo in range(i * shard_size, i * shard_size + size_of(i), batch_size)]
    # DataLoader reads any map-style dataset; its stub wants torch's Dataset class
    loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
        cast("Dataset[tuple[torch.Tensor, int]]", dataset), batch_sampler=batches, num_workers=num_workers,
        pin_memory=d.device.type == "cuda")
    shard_iter = iter(todo)
    posts: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    current, filled = None, 0
    for images, ys in loader:
        if current is None:
            current, posts, labels, filled = next(shard_iter), [], [], 0
        images = images.to(d.device, non_blocking=True)
        if images.shape[-1] != image_size or images.shape[-2] != image_size:
            raise DataError(f"data.image_size: dataset '{key['dataset']}' gives {images.shape[-2]}x"
                            f"{images.shape[-1]} images, expected {image_size}x{image_size}")
        mean, std = codec.posterior(torch.cat([images, images.flip(-1)]))
        b = images.shape[0]
        views = torch.stack([torch.stack([mean[:b], std[:b]], 1), torch.stack([mean[b:], std[b:]], 1)], 1)
        posts.append(views.to(dtype).cpu())
        labels.append(torch.as_tensor(ys).long().reshape(-1).cpu())
        filled += b
        bar.update(b)
        if filled == size_of(current):
            save_torch({"posterior": torch.cat(posts), "labels": torch.cat(labels),
                        "start": current * shard_size}, shard_file(root, current))
            current = None
    bar.close()
    d.barrier()
    if d.is_main:
        missing = [i for i in range(num_shards) if not shard_file(root, i).exists()]
        if missing:
            raise DataError(f"{root}: shards {missing[:5]} were not written; run dtr cache-latents again")
        write_json(root / MANIFEST, {**plan, "complete": True})
    d.barrier()
    return root


class LatentCacheDataset(Dataset):
    """Items of a complete latent cache: ``(posterior, label)``, ``posterior`` shaped ``[V, 2, C, h, w]``.

    ``V`` is 2 (the image and its flip; :func:`draw_latents` picks one per sample) with ``random_flip``,
    else 1. Shards are memory-mapped on first use, so the cache may be far larger than memory.
    """

    def __init__(self, root: str | Path, random_flip: bool = False):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if manifest is None or not manifest.get("complete"):
            raise DataError(f"{self.root}: not a complete latent cache; run dtr cache-latents")
        self.manifest = manifest
        self.num_items = int(manifest["num_items"])
        self.shard_size = int(manifest["shard_size"])
        self.latent_shape = tuple(manifest["latent_shape"])
        self.num_classes = manifest.get("num_classes")
        self.views = 2 if random_flip else 1
        self._shards: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.num_items

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers (spawn) open their own memory maps
        return {**self.__dict__, "_shards": {}}

    def _shard(self, index: int) -> dict[str, torch.Tensor]:
        shard = self._shards.get(index)
        if shard is None:
            path = shard_file(self.root, index)
            try:
                shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # noqa: BLE001 -- torch.load raises many kinds on a corrupt file
                raise DataError(f"{path}: unreadable latent cache shard ({first_line(exc, limit=200)}); delete it "
                                "and run dtr cache-latents again") from None
            self._check_shard(shard, index, path)
            self._shards[index] = shard
        return shard

    def _check_shard(self, shard: Any, index: int, path: Path) -> None:
        """A shard must hold the items this position of the cache holds: its ``start``, ``posterior`` and
        ``labels`` of this shard's length (a shard swapped or copied from elsewhere is refused with a DataError)."""
        start = index * self.shard_size
        size = min(self.num_items, start + self.shard_size) - start
        ok = isinstance(shard, dict) and shard.get("start") == start and all(
            isinstance(shard.get(k), torch.Tensor) and len(shard[k]) == size for k in ("posterior", "labels"))
        if not ok:
            found = shard.get("start") if isinstance(shard, dict) else None
            raise DataError(f"{path}: not shard {index} of this cache (expected {size} items from item {start}, found "
                            f"a shard starting at {found!r}); it was moved or swapped: delete it and run dtr "
                            "cache-latents again")

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_items:
            raise IndexError(index)
        shard_index, j = divmod(int(index), self.shard_size)
        shard = self._shard(shard_index)
        return shard["posterior"][j, :self.views], int(shard["labels"][j])


def draw_latents(batch: torch.Tensor) -> torch.Tensor:
    """Cached posteriors ``[N, V, 2 (mean, std), C, h, w]`` -> ``mean + std * noise`` ``[N, C, h, w]`` of
    a random view per sample (the view only drawn when ``V > 1``), float32, on the batch's device."""
    if batch.ndim != 6 or batch.shape[2] != 2:
        raise DataError(f"latent cache: expected cached posteriors [N, V, 2, C, h, w], got a batch of shape "
                        f"{tuple(batch.shape)}")
    n, views = batch.shape[:2]
    if views > 1:
        pick = torch.randint(views, (n,), device=batch.device)
        post = batch[torch.arange(n, device=batch.device), pick]
    else:
        post = batch[:, 0]
    post = post.float()
    mean, std = post[:, 0], post[:, 1]
    return mean + std * torch.randn_like(mean)
