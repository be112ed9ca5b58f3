"""``autoencoder_kl``: a frozen diffusers ``AutoencoderKL`` as a codec (SD, SDXL, SD3 and FLUX VAEs).

``path`` is a local diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, as
``save_pretrained`` writes it) or a Hugging Face hub id. A hub id is looked up in the local hub cache
first; the network is tried only when ``HF_HUB_OFFLINE`` is not set (read when the codec is built, not
when Python started), and when neither works the error is one line saying how to point ``vae.path`` at
a local folder.

Normalisation (every field of the VAE's own config that changes the latents): with ``z`` the raw
posterior sample, the denoiser sees ``(z - shift - m_c) * scale / s_c`` and ``decode`` inverts it,
``z = x * s_c / scale + m_c + shift``, where ``scale`` is ``vae.scale_factor`` (else the config's
``scaling_factor``, else 0.18215), ``shift`` the config's ``shift_factor`` (SD3/FLUX; else 0) and
``m_c``/``s_c`` the per-channel ``latents_mean``/``latents_std`` (SDXL-style; else 0 and 1). Source:
the diffusers pipelines (``StableDiffusion3Pipeline``: ``(latents - shift_factor) * scaling_factor``;
SDXL-style ``(latents - latents_mean) * scaling_factor / latents_std``).

Only ``config.json`` is read when the codec is built: the latent geometry (``latent_channels`` and the
downsampling factor ``2 ** (len(block_out_channels) - 1)``) comes from it. The weights load on first
encode or decode, so training from a latent cache never holds the VAE in memory. The module is frozen
(no gradients), in eval mode and runs in float32 with autocast off.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dtr_plugins.core.errors import ConfigError, DataError, first_line
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.io import file_sha256

DEFAULT_SCALE_FACTOR = 0.18215
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_WEIGHTS_PATTERNS = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")

__all__ = ["AutoencoderKLParams", "AutoencoderKLCodec", "load_autoencoder_kl", "resolve_vae_folder"]


class AutoencoderKLParams(BaseModel):
    """Parameters of the ``autoencoder_kl`` codec (the ``vae`` section gives the same fields)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="hub id (stabilityai/sd-vae-ft-ema) or a local diffusers AutoencoderKL folder")
    scale_factor: float | None = Field(None, gt=0, description="latent scale; default: the VAE config's "
                                       "scaling_factor, else 0.18215")
    batch_size: int = Field(32, ge=1, description="images per VAE encode / decode call (bounds memory)")


class AutoencoderKLCodec:
    """A frozen ``AutoencoderKL`` (weights loaded on first use) and its latent normalisation.

    ``posterior`` / ``encode`` take images in ``[-1, 1]`` (NCHW) and give normalised latents; ``decode``
    takes normalised latents and gives images in ``[-1, 1]``. All three work in chunks of ``batch_size``
    images on the device of their input (the VAE follows it there).
    """

    bounded = False

    def __init__(self, folder: Path, source: str, config: dict[str, Any], scale_factor: float | None = None,
                 batch_size: int = 32):
        self.folder = Path(folder)
        self.source = source
        self.config = dict(config)
        self.scale_factor = float(scale_factor or config.get("scaling_factor") or DEFAULT_SCALE_FACTOR)
        self.shift_factor = float(config.get("shift_factor") or 0.0)
        self.batch_size = int(batch_size)
        self.latent_channels = int(config.get("latent_channels", 4))
        self.in_channels = int(config.get("in_channels", 3))
        self.downsample = 2 ** (len(config.get("block_out_channels", [0])) - 1)
        self.latents_mean = self._per_channel("latents_mean")
        self.latents_std = self._per_channel("latents_std")
        if self.latents_std is not None and any(s <= 0 for s in self.latents_std):
            raise ConfigError(f"vae.path: {source}: config.json latents_std must be positive, got {self.latents_std}")
        self._module = None
        self._fingerprint: str | None = None

    def _per_channel(self, key: str) -> list[float] | None:
        value = self.config.get(key)
        if value is None:
            return None
        values = [float(v) for v in value]
        if len(values) != self.latent_channels:
            raise ConfigError(f"vae.path: {self.source}: config.json {key} has {len(values)} values, the VAE has "
                              f"{self.latent_channels} latent channels")
        return values

    def __repr__(self) -> str:
        return (f"AutoencoderKLCodec({self.source!r}, latent_channels={self.latent_channels}, "
                f"downsample={self.downsample}, scale_factor={self.scale_factor}, shift_factor={self.shift_factor})")

    # -------------------------------------------------------------------------------- geometry
    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(latent_channels, H // f, W // f)``; sides must be multiples of the downsampling ``f``."""
        _, height, width = (int(s) for s in image_shape)
        for side in (height, width):
            if side % self.downsample:
                raise ConfigError(f"data.image_size: {side} is not divisible by the VAE's downsampling factor "
                                  f"{self.downsample} ({self.source})")
        return self.latent_channels, height // self.downsample, width // self.downsample

    # ---------------------------------------------------------------------------- normalisation
    def _affine(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel ``(offset, gain)`` shaped ``[1, C, 1, 1]``: normalised = (z - offset) * gain."""
        c = self.latent_channels
        mean = torch.tensor(self.latents_mean or [0.0] * c, dtype=torch.float32, device=like.device)
        std = torch.tensor(self.latents_std or [1.0] * c, dtype=torch.float32, device=like.device)
        return (mean + self.shift_factor).view(1, c, 1, 1), (self.scale_factor / std).view(1, c, 1, 1)

    def normalise(self, z: Tensor, std: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        offset, gain = self._affine(z)
        return (z - offset) * gain, None if std is None else std * gain

    def denormalise(self, latents: Tensor) -> Tensor:
        offset, gain = self._affine(latents)
        return latents / gain + offset

    # ------------------------------------------------------------------------------------ module
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
        except Exception as exc:  # noqa: BLE001 -- diffusers reports a bad folder as OSError, ValueError, ...
            raise ConfigError(f"vae.path: cannot load the VAE weights from {self.folder}: "
                              f"{first_line(exc, limit=200)}") from None
        module.requires_grad_(False).eval()
        return module.float()

    def on(self, device: torch.device):
        """The module on ``device`` (moved there if needed)."""
        module = self.module
        if next(module.parameters()).device != torch.device(device):
            module.to(device)
        return module

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            got = f"{images.shape[1]}-channel" if images.ndim == 4 else f"{images.ndim}-D"
            raise DataError(f"data: the VAE ({self.source}) encodes {self.in_channels}-channel images, the dataset "
                            f"gives {got} images (set the dataset's channels to {self.in_channels})")
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise DataError(f"data: {images.shape[-2]}x{images.shape[-1]} images are not divisible by the VAE's "
                            f"downsampling factor {self.downsample}")

    # ------------------------------------------------------------------------- encode / decode
    @torch.no_grad()
    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised posterior mean and std (float32) of images in ``[-1, 1]``."""
        self._check_images(images)
        module = self.on(images.device)
        means, stds = [], []
        with _no_autocast(images.device):
            for chunk in images.split(self.batch_size):
                dist = module.encode(chunk.float()).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
        mean, std = self.normalise(torch.cat(means), torch.cat(stds))
        return mean, std  # type: ignore[return-value]

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """A sample of the normalised posterior: ``mean + std * noise``."""
        mean, std = self.posterior(images)
        return mean + std * torch.randn_like(mean)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents -> images in ``[-1, 1]`` (float32, NCHW, on the latents' device), in chunks."""
        module = self.on(latents.device)
        out = []
        with _no_autocast(latents.device):
            for chunk in latents.split(self.batch_size):
                out.append(module.decode(self.denormalise(chunk.float())).sample.float().clamp_(-1, 1))
        return torch.cat(out) if out else latents.new_zeros((0, self.in_channels, 0, 0))

    # ------------------------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """SHA-256 over the weights files, ``config.json`` and the normalisation applied."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            weights = sorted({p for pattern in _WEIGHTS_PATTERNS for p in self.folder.glob(pattern)})
            for path in weights:
                digest.update(path.name.encode())
                digest.update(file_sha256(path).encode())
            digest.update(json.dumps(self.config, sort_keys=True).encode())
            digest.update(json.dumps(self.normalisation(), sort_keys=True).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def normalisation(self) -> dict[str, Any]:
        """What is applied to the raw latents (recorded in cache manifests)."""
        return {"scaling_factor": self.scale_factor, "shift_factor": self.shift_factor,
                "latents_mean": self.latents_mean, "latents_std": self.latents_std}




def _no_autocast(device: torch.device):
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def load_autoencoder_kl(path: str, scale_factor: float | None = None, batch_size: int = 32) -> AutoencoderKLCodec:
    """Resolve ``path`` (local folder or hub id) and read the VAE's config; weights load on first use."""
    folder, source = resolve_vae_folder(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "vae" / "config.json").is_file():
            raise ConfigError(f"vae.path: {path} looks like a diffusers pipeline folder; set vae.path to its "
                              f"'vae' subfolder ({folder / 'vae'})")
        raise ConfigError(f"vae.path: {path} has no config.json; expected a diffusers AutoencoderKL folder "
                          f"(config.json and {WEIGHTS_FILE}, as save_pretrained writes them)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"vae.path: cannot read {config_file}: {first_line(exc, limit=200)}") from None
    kind = config.get("_class_name", "AutoencoderKL")
    if kind != "AutoencoderKL" or "block_out_channels" not in config:
        raise ConfigError(f"vae.path: {path} holds a {kind}, not an AutoencoderKL")
    return AutoencoderKLCodec(folder, source, config, scale_factor=scale_factor, batch_size=batch_size)


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


def _hub_snapshot(repo_id: str) -> Path:
    from dtr_plugins.core.hf_hub import HubUnavailable, snapshot

    try:
        return snapshot(repo_id, ["config.json", WEIGHTS_FILE], complete=lambda f: (f / "config.json").is_file())
    except ImportError:
        raise ConfigError(f"vae.path: {repo_id!r} is not a local folder, and loading a hub VAE needs diffusers "
                          "(pip install 'dtr-plugins[latent]')") from None
    except HubUnavailable as why:
        raise ConfigError(_not_available(repo_id, str(why))) from None


def _not_available(repo_id: str, why: str) -> str:
    return (f"vae.path: cannot load the hub VAE {repo_id!r}: {why}; on a machine with network run "
            f"python -c \"from diffusers import AutoencoderKL; AutoencoderKL.from_pretrained('{repo_id}')"
            f".save_pretrained('DIR')\", copy DIR here and set vae.path to that local folder "
            f"(--set vae.path=/path/to/DIR)")


@hookimpl
def dtr_register_codecs(register: Callable[..., None]) -> None:
    register("autoencoder_kl", load_autoencoder_kl, params=AutoencoderKLParams,
             description="a frozen diffusers AutoencoderKL (SD/SDXL/SD3/FLUX VAEs), normalised as its config says")
