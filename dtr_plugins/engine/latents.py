"""Latent space: a frozen diffusers ``AutoencoderKL`` and an on-disk cache of its posteriors.

The VAE
-------
:func:`load_vae` turns a config's ``vae`` section into a :class:`FrozenVae`. ``vae.path`` is a local
diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, as ``save_pretrained`` writes
it) or a Hugging Face hub id. A hub id is looked up in the local hub cache first; the network is tried
only when ``HF_HUB_OFFLINE`` is not set (read when the VAE is loaded, not when Python started), and when
neither works the error is one line saying how to point ``vae.path`` at a local folder.

Only ``config.json`` is read when the VAE is loaded: the latent geometry (``latent_channels`` and the
downsampling factor ``2 ** (len(block_out_channels) - 1)``) and the default scale factor come from it.
The weights load on first use (encode or decode), so training from a cache never holds the VAE in
memory and drawing masks never imports diffusers. The VAE is frozen (no gradients), always in eval mode
and runs in float32 with autocast off. It is not an ``nn.Module`` attribute of the model: it stays out
of ``state_dict()``, ``parameters()`` and the EMA (``copy.deepcopy`` shares it instead of copying).

The cache
---------
``dtr cache-latents CONFIG`` (:func:`cache_latents`) encodes the dataset once. For every image it stores
the posterior mean and std of the image and of its horizontal flip, already multiplied by the scale
factor: a ``[2 (image, flip), 2 (mean, std), C, h, w]`` tensor. Items are written in shards of
``vae.shard_size`` images (``shard-00000.pt`` ...) holding ``posterior`` ``[n, 2, 2, C, h, w]``,
``labels`` ``[n]`` and ``start``; each shard is written atomically, so a shard that exists is complete
and an interrupted run resumes where it stopped. ``manifest.json`` records what was encoded and says
``"complete": true`` once every shard is there. Under torchrun each rank encodes every world-size-th shard.

The cache lives in ``<vae.cache_dir or <output_dir>/latent_cache>/<dataset>-<size>px-<digest>``, the
digest being a hash of the key: dataset name and parameters (``random_flip`` excluded: both views are
stored), image size, VAE path and scale factor, and storage dtype. Training finds it through
:func:`cached_dataset` (called by ``build_dataset``); the latent backbone then draws
``mean + std * noise`` and, when the dataset flips (``data.random_flip``), a random view per sample, on
the device. Without a cache the backbone encodes each batch online (slower) and a one-line hint says so.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dtr_plugins.core.config import ExperimentConfig, VaeConfig
from dtr_plugins.core.errors import ConfigError, DataError, first_line
from dtr_plugins.core.io import save_torch, write_json

CACHE_FORMAT = "dtr-latent-cache/1"
MANIFEST = "manifest.json"
DEFAULT_SCALE_FACTOR = 0.18215
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_TRUE = {"1", "ON", "YES", "TRUE"}

__all__ = ["FrozenVae", "load_vae", "require_vae", "data_image_size", "cache_key", "cache_path", "cache_latents",
           "cached_dataset", "LatentCacheDataset", "read_manifest"]


# ------------------------------------------------------------------------------------------------ VAE
class FrozenVae:
    """A frozen ``AutoencoderKL`` (weights loaded on first use) and its scale factor.

    ``posterior`` / ``encode`` take images in ``[-1, 1]`` (NCHW) and give scaled latents; ``decode`` takes
    scaled latents and gives images in ``[-1, 1]``. All three work in chunks of ``batch_size`` images, on
    the device of their input (the VAE follows it there).
    """

    def __init__(self, folder: Path, source: str, config: dict[str, Any], scale_factor: float, batch_size: int = 32):
        self.folder = Path(folder)
        self.source = source
        self.config = dict(config)
        self.scale_factor = float(scale_factor)
        self.batch_size = int(batch_size)
        self.latent_channels = int(config.get("latent_channels", 4))
        self.in_channels = int(config.get("in_channels", 3))
        self.downsample = 2 ** (len(config.get("block_out_channels", [0])) - 1)
        self._module = None

    # Shared, never copied: the EMA (copy.deepcopy of the model) uses the same frozen VAE.
    def __deepcopy__(self, memo: dict) -> "FrozenVae":
        return self

    def __repr__(self) -> str:
        return (f"FrozenVae({self.source!r}, latent_channels={self.latent_channels}, downsample={self.downsample}, "
                f"scale_factor={self.scale_factor})")

    def latent_size(self, image_size: int) -> int:
        """Side of the latent of an ``image_size`` image; the size must be a multiple of the downsampling."""
        if image_size % self.downsample:
            raise ConfigError(f"data.image_size: {image_size} is not divisible by the VAE's downsampling factor "
                              f"{self.downsample} ({self.source})")
        return image_size // self.downsample

    @property
    def loaded(self) -> bool:
        return self._module is not None

    @property
    def module(self):
        """The diffusers ``AutoencoderKL``, loaded on first access: frozen, eval mode, float32."""
        if self._module is None:
            self._module = self._load()
        return self._module

    def _load(self):
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise ConfigError("vae.path: latent backbones need diffusers (pip install 'dtr-plugins[latent]')") from None
        try:
            module = AutoencoderKL.from_pretrained(str(self.folder), low_cpu_mem_usage=False)
        except Exception as exc:  # diffusers reports a bad folder as OSError, ValueError, EnvironmentError ...
            raise ConfigError(f"vae.path: cannot load the VAE weights from {self.folder}: {first_line(exc, limit=200)}") from None
        module.requires_grad_(False).eval()
        return module.float()

    def on(self, device: torch.device):
        """The module on ``device`` (moved there if needed)."""
        module = self.module
        if next(module.parameters()).device != torch.device(device):
            module.to(device)
        return module

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            got = f"{images.shape[1]}-channel" if images.ndim == 4 else f"{images.ndim}-D"
            raise DataError(f"data: the VAE ({self.source}) encodes {self.in_channels}-channel images, the dataset "
                            f"gives {got} images (set the dataset's channels to {self.in_channels})")
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise DataError(f"data: {images.shape[-2]}x{images.shape[-1]} images are not divisible by the VAE's "
                            f"downsampling factor {self.downsample}")

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled posterior mean and std (float32) of images in ``[-1, 1]``."""
        self._check_images(images)
        module = self.on(images.device)
        means, stds = [], []
        with _no_autocast(images.device):
            for chunk in images.split(self.batch_size):
                dist = module.encode(chunk.float()).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
        return torch.cat(means) * self.scale_factor, torch.cat(stds) * self.scale_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """A sample of the scaled posterior: ``(mean + std * noise) * scale_factor``."""
        mean, std = self.posterior(images)
        return mean + std * torch.randn_like(mean)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in ``[-1, 1]`` (float32, NCHW, on the latents' device), in chunks."""
        module = self.on(latents.device)
        out = []
        with _no_autocast(latents.device):
            for chunk in latents.split(self.batch_size):
                out.append(module.decode(chunk.float() / self.scale_factor).sample.float().clamp_(-1, 1))
        return torch.cat(out) if out else latents.new_zeros((0, self.in_channels, 0, 0))


def _no_autocast(device: torch.device):
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def load_vae(vae: VaeConfig) -> FrozenVae:
    """Resolve ``vae.path`` (local folder or hub id) and read the VAE's config; weights load on first use."""
    folder, source = resolve_vae_folder(vae.path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "vae" / "config.json").is_file():
            raise ConfigError(f"vae.path: {vae.path} looks like a diffusers pipeline folder; set vae.path to its "
                              f"'vae' subfolder ({folder / 'vae'})")
        raise ConfigError(f"vae.path: {vae.path} has no config.json; expected a diffusers AutoencoderKL folder "
                          f"(config.json and {WEIGHTS_FILE}, as save_pretrained writes them)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"vae.path: cannot read {config_file}: {first_line(exc, limit=200)}") from None
    kind = config.get("_class_name", "AutoencoderKL")
    if kind != "AutoencoderKL" or "block_out_channels" not in config:
        raise ConfigError(f"vae.path: {vae.path} holds a {kind}, not an AutoencoderKL")
    scale = vae.scale_factor or config.get("scaling_factor") or DEFAULT_SCALE_FACTOR
    return FrozenVae(folder, source, config, scale, batch_size=vae.batch_size)


def resolve_vae_folder(path: str) -> tuple[Path, str]:
    """``(local folder, canonical source)``: an existing folder as is, a hub id through the hub cache."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ConfigError(f"vae.path: {path} is a file; expected a diffusers AutoencoderKL folder or a hub id")
        local = local.resolve()
        return local, str(local)
    if path.startswith(("/", ".", "~")) or "\\" in path or path.count("/") > 1:
        raise ConfigError(f"vae.path: folder {path!r} does not exist")
    return _hub_snapshot(path), path


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as it is now (huggingface_hub reads it only once, at import)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in _TRUE
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_cache_dir() -> str | None:
    """The hub cache as the environment says now (HF_HUB_CACHE, else HF_HOME/hub); None: the library default."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.environ[name]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(f"vae.path: {repo_id!r} is not a local folder, and loading a hub VAE needs diffusers "
                          "(pip install 'dtr-plugins[latent]')") from None
    kwargs = dict(repo_id=repo_id, allow_patterns=["config.json", WEIGHTS_FILE], cache_dir=_hub_cache_dir())
    try:
        folder = Path(snapshot_download(local_files_only=True, **kwargs))
        if (folder / "config.json").is_file():
            return folder
    except Exception:  # not in the local cache: try the network if allowed
        pass
    if _hub_offline():
        raise ConfigError(_not_available(repo_id, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                                                  "is set"))
    try:
        return Path(snapshot_download(**kwargs))
    except Exception as exc:
        raise ConfigError(_not_available(repo_id, f"it is not in the local Hugging Face cache and the download "
                                                  f"failed ({first_line(exc, limit=200)})")) from None


def _not_available(repo_id: str, why: str) -> str:
    return (f"vae.path: cannot load the hub VAE {repo_id!r}: {why}; on a machine with network run "
            f"python -c \"from diffusers import AutoencoderKL; AutoencoderKL.from_pretrained('{repo_id}')"
            f".save_pretrained('DIR')\", copy DIR here and set vae.path to that local folder "
            f"(--set vae.path=/path/to/DIR)")


def data_image_size(cfg: ExperimentConfig) -> int:
    """``data.image_size``: the pixel size the VAE encodes (the latent size follows from it)."""
    size = cfg.data.params.get("image_size")
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"data.image_size: dataset '{cfg.data.name}' must give an image_size for a latent backbone "
                          f"(got {size!r})")
    return size


def require_vae(cfg: ExperimentConfig, what: str) -> VaeConfig:
    if cfg.vae is None:
        raise ConfigError(f"vae.path: {what} needs a vae section, e.g. vae: {{path: stabilityai/sd-vae-ft-ema}} "
                          "(a hub id or a local diffusers folder)")
    return cfg.vae


# ---------------------------------------------------------------------------------------------- cache
def cache_key(cfg: ExperimentConfig, vae: FrozenVae) -> dict[str, Any]:
    """What identifies a cache: dataset and its parameters, image size, VAE and scale factor, dtype."""
    vae_cfg = require_vae(cfg, "a latent cache")
    params = {k: v for k, v in sorted(cfg.data.params.items()) if k != "random_flip"}
    if isinstance(params.get("path"), str) and Path(params["path"]).expanduser().exists():
        params["path"] = str(Path(params["path"]).expanduser().resolve())
    return {"format": CACHE_FORMAT, "dataset": cfg.data.name, "params": params, "image_size": data_image_size(cfg),
            "vae": {"path": vae.source, "scale_factor": vae.scale_factor}, "dtype": vae_cfg.cache_dtype}


def cache_path(cfg: ExperimentConfig, vae: FrozenVae) -> Path:
    """``<vae.cache_dir or <output_dir>/latent_cache>/<dataset>-<size>px-<digest of the key>``."""
    vae_cfg = require_vae(cfg, "a latent cache")
    key = cache_key(cfg, vae)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(vae_cfg.cache_dir).expanduser() if vae_cfg.cache_dir else Path(cfg.output_dir) / "latent_cache"
    return base / f"{cfg.data.name}-{key['image_size']}px-{digest}"


def shard_file(root: Path, index: int) -> Path:
    return root / f"shard-{index:05d}.pt"


def read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == CACHE_FORMAT else None


def _plan_fields(manifest: dict[str, Any]) -> tuple:
    return tuple(manifest.get(k) for k in ("key", "num_items", "shard_size", "latent_shape"))


def cache_latents(cfg: ExperimentConfig, *, registry=None, progress: bool = True) -> Path:
    """Encode ``cfg``'s dataset with its VAE into the latent cache (resumable); returns the cache folder."""
    from tqdm.auto import tqdm

    from dtr_plugins.core.plugins import default_registry

    from . import distributed

    vae_cfg = require_vae(cfg, "dtr cache-latents")
    vae = load_vae(vae_cfg)
    image_size = data_image_size(cfg)
    latent = vae.latent_size(image_size)
    root = cache_path(cfg, vae)
    key = cache_key(cfg, vae)

    # The cache holds both views itself, so the dataset is read without its own random flips.
    registry = registry or default_registry()
    params = dict(cfg.data.params)
    if "random_flip" in params:
        params["random_flip"] = False
    dataset = registry.build("dataset", cfg.data.name, **params)
    n = len(dataset)
    if n == 0:
        raise DataError(f"data: dataset '{cfg.data.name}' is empty")
    shard_size = vae_cfg.shard_size
    num_shards = math.ceil(n / shard_size)
    plan = {"format": CACHE_FORMAT, "key": key, "num_items": n, "shard_size": shard_size, "num_shards": num_shards,
            "latent_shape": [vae.latent_channels, latent, latent], "dtype": vae_cfg.cache_dtype,
            "layout": "posterior[n, view (image, hflip), (mean, std), C, h, w], scaled by scale_factor",
            "scale_factor": vae.scale_factor, "num_classes": getattr(dataset, "num_classes", None)}

    existing = read_manifest(root)
    all_there = all(shard_file(root, i).exists() for i in range(num_shards))
    if existing is not None and existing.get("complete") and _plan_fields(existing) == _plan_fields(plan) and all_there:
        return root

    d = distributed.setup(cfg.train.device)
    try:
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
                   desc="cache-latents", unit="img", disable=not (progress and d.is_main), dynamic_ncols=True)
        dtype = getattr(torch, vae_cfg.cache_dtype)
        batch = vae_cfg.batch_size
        batches = [list(range(lo, min(lo + batch, i * shard_size + size_of(i))))
                   for i in todo for lo in range(i * shard_size, i * shard_size + size_of(i), batch)]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.train.num_workers,
                            pin_memory=d.device.type == "cuda")
        shard_iter = iter(todo)
        current, posts, labels, filled = None, [], [], 0
        for images, ys in loader:
            if current is None:
                current, posts, labels, filled = next(shard_iter), [], [], 0
            images = images.to(d.device, non_blocking=True)
            if images.shape[-1] != image_size or images.shape[-2] != image_size:
                raise DataError(f"data.image_size: dataset '{cfg.data.name}' gives {images.shape[-2]}x"
                                f"{images.shape[-1]} images, expected {image_size}x{image_size}")
            mean, std = vae.posterior(torch.cat([images, images.flip(-1)]))
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
    finally:
        distributed.teardown(d)


class LatentCacheDataset(Dataset):
    """Items of a complete latent cache: ``(posterior, label)``, ``posterior`` shaped ``[V, 2, C, h, w]``.

    ``V`` is 2 (the image and its flip; the backbone picks one per sample) with ``random_flip``, else 1.
    Shards are memory-mapped on first use, so the cache may be far larger than memory.
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
            except Exception as exc:
                raise DataError(f"{path}: unreadable latent cache shard ({first_line(exc, limit=200)}); delete it and run "
                                "dtr cache-latents again") from None
            self._shards[index] = shard
        return shard

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_items:
            raise IndexError(index)
        shard_index, j = divmod(int(index), self.shard_size)
        shard = self._shard(shard_index)
        return shard["posterior"][j, :self.views], int(shard["labels"][j])


def cached_dataset(cfg: ExperimentConfig) -> LatentCacheDataset | None:
    """The latent cache of ``cfg`` if a complete one exists; else None, after a one-line hint on stderr."""
    vae = load_vae(require_vae(cfg, "a latent cache"))
    root = cache_path(cfg, vae)
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("complete") and manifest.get("key") == cache_key(cfg, vae):
        return LatentCacheDataset(root, random_flip=bool(cfg.data.params.get("random_flip", False)))
    if os.environ.get("RANK", "0") == "0":
        state = "is incomplete" if manifest is not None else "does not exist"
        print(f"dtr: hint: the latent cache {root} {state}, so every batch is encoded with the VAE (slower); "
              f"run `dtr cache-latents CONFIG` once to build it", file=sys.stderr)
    return None
