"""The frozen encoders of the ``repa`` regulariser: clean images -> patch features on the backbone's token grid.

Every encoder maps images ``[N, C, H, W]`` in ``[-1, 1]`` (``C`` 1 or 3; grey is repeated to RGB where the encoder
takes RGB) to features ``[N, gh * gw, dim]`` in row-major patch order, the order of the backbone's tokens, without
gradients, in eval mode, in float32. The weights load on the first call (``dtr validate`` reads only configs).

- ``dinov2``: transformers' ``Dinov2Model`` from a hub id (default ``facebook/dinov2-base``) or a local folder (as
  ``save_pretrained`` writes it). The image is **resized** (bicubic) to ``(gh * patch, gw * patch)`` so that the
  encoder's patch grid is the backbone's token grid, as REPA's code does for ImageNet 256 (224 px, 16 x 16 patches
  of 14 for the 16 x 16 tokens of SiT-XL/2): each target is the feature of the same image region as its token.
  Pixels go to ``[0, 1]`` and are normalised with the ImageNet mean and std; the targets are the patch tokens of
  ``last_hidden_state`` (after the final LayerNorm, DINOv2's ``x_norm_patchtokens``), the CLS token dropped.
- ``digits-classifier`` / ``fashion-classifier``: the project's offline evaluation classifiers
  (:mod:`dtr_plugins.extractors`), so a CPU run uses REPA without any download. They only read their own input
  size (8 or 28 px), so the image goes in as for evaluation and their last conv feature map (digits: 32 channels
  on 4 x 4; fashion: 64 channels on 7 x 7, after its pooling) is **interpolated** to the token grid (area
  averaging to shrink, bilinear to enlarge). ``path``: a weights file; default: the cached classifier, trained on
  first use (offline).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dtr_plugins.core.errors import ConfigError, first_line

__all__ = ["EncoderName", "ENCODERS", "FrozenEncoder", "make_encoder", "to_tokens", "DINOV2_DEFAULT"]

EncoderName = Literal["dinov2", "digits-classifier", "fashion-classifier"]
ENCODERS: tuple[str, ...] = ("dinov2", "digits-classifier", "fashion-classifier")
DINOV2_DEFAULT = "facebook/dinov2-base"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_KEY = "regularizer.encoder_path"


def to_tokens(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """Feature maps ``[N, D, h, w]`` -> tokens ``[N, gh * gw, D]`` on ``grid``: area averaging where the grid is
    coarser, bilinear interpolation where it is finer (both when the axes differ: area first)."""
    gh, gw = grid
    h, w = maps.shape[-2:]
    if (h, w) != (gh, gw):
        if gh <= h and gw <= w:
            maps = F.interpolate(maps, size=(gh, gw), mode="area")
        else:
            maps = F.interpolate(maps, size=(gh, gw), mode="bilinear", align_corners=False)
    return maps.flatten(2).transpose(1, 2)


@dataclass
class FrozenEncoder:
    """One frozen encoder: ``name``, feature width ``dim``, where its weights come from (``source``) and how its
    features reach the tokens (``match``: ``resize`` the image or ``interpolate`` the feature map)."""

    name: str
    dim: int
    source: str
    match: str
    folder: Path | None = None  # dinov2: the resolved model folder
    patch: int = 0  # dinov2: its patch size
    _net: Any = None  # the loaded net (DigitsNet, FashionNet or Dinov2Model), on the last device used

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "dim": self.dim, "match": self.match}

    @torch.no_grad()
    def features(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """``images`` ``[N, C, H, W]`` in ``[-1, 1]`` -> ``[N, gh * gw, dim]`` float32 (see the module docstring).
        Raises ConfigError when ``C`` is not 1 or 3 or the encoder's tokens do not fit ``grid``."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(f"regularizer.encoder: {self.name} reads 1- or 3-channel images; the data give "
                              f"{list(images.shape[1:])}")
        net = self._load(images.device)
        x = images.float()
        if self.name == "dinov2":
            return self._dinov2(net, x, grid)
        x255 = (x + 1.0) * 127.5  # the classifiers' preprocess reads uint8 values (as floats here)
        h = net.preprocess(x255)
        h = F.relu(net.conv1(h))
        if self.name == "digits-classifier":
            maps = F.relu(net.conv2(h))  # [N, 32, 4, 4]
        else:
            maps = F.max_pool2d(F.relu(net.conv2(F.max_pool2d(h, 2))), 2)  # [N, 64, 7, 7]
        return to_tokens(maps, grid)

    def _dinov2(self, net: Any, x: Tensor, grid: tuple[int, int]) -> Tensor:
        gh, gw = grid
        x = (x + 1.0) / 2.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = F.interpolate((x - mean) / std, size=(gh * self.patch, gw * self.patch), mode="bicubic",
                          align_corners=False)
        with torch.autocast(device_type=x.device.type, enabled=False):
            tokens = net(pixel_values=x).last_hidden_state
        if tokens.shape[1] != gh * gw + 1:
            raise ConfigError(f"{_KEY}: {self.source} gives {tokens.shape[1]} tokens for a {gh}x{gw} patch grid "
                              f"({gh * gw} patch tokens + CLS expected): its tokens do not fit the backbone's")
        return tokens[:, 1:]

    def _load(self, device: torch.device) -> Any:
        if self._net is None:  # building a net draws its initial weights: leave the step's generator untouched
            with torch.random.fork_rng(devices=[]):
                self._net = self._build()
        if next(self._net.parameters()).device != device:
            self._net = self._net.to(device)
        return self._net

    def _build(self) -> nn.Module:
        if self.name == "dinov2":
            from transformers import Dinov2Model

            net: nn.Module = Dinov2Model.from_pretrained(str(self.folder))
        elif self.name == "digits-classifier":
            from dtr_plugins.extractors.builtin import ensure_digits_classifier, load_digits_net

            net = load_digits_net(self.source if self.source != "cached" else ensure_digits_classifier())
        else:
            from dtr_plugins.extractors.fashion_classifier import ensure_classifier, load_net

            net = load_net(self.source if self.source != "cached" else str(ensure_classifier()[0]))
        return net.eval().requires_grad_(False)


def make_encoder(name: str, path: str | None) -> FrozenEncoder:
    """The :class:`FrozenEncoder` ``name`` with weights from ``path`` (dinov2: hub id or folder, default
    ``facebook/dinov2-base``; classifiers: a weights file, default the cached one). Raises ConfigError (one line
    naming ``regularizer.encoder`` / ``regularizer.encoder_path``) for an unknown encoder or missing weights."""
    if name == "dinov2":
        source = path or DINOV2_DEFAULT
        folder = _resolve_folder(source)
        config = _dinov2_config(folder)
        return FrozenEncoder(name, int(config["hidden_size"]), source, "resize", folder=folder,
                             patch=int(config["patch_size"]))
    dims = {"digits-classifier": 32, "fashion-classifier": 64}
    if name not in dims:
        raise ConfigError(f"regularizer.encoder: unknown encoder {name!r} (allowed: {', '.join(ENCODERS)})")
    if path is not None and not Path(path).expanduser().is_file():
        raise ConfigError(f"{_KEY}: weights file {path!r} of {name} not found")
    return FrozenEncoder(name, dims[name], str(Path(path).expanduser()) if path else "cached", "interpolate")


def _resolve_folder(source: str) -> Path:
    local = Path(source).expanduser()
    if not local.exists():
        if source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1:
            raise ConfigError(f"{_KEY}: folder {source!r} does not exist (a Dinov2Model save_pretrained folder "
                              f"or a hub id such as {DINOV2_DEFAULT})")
        local = _hub_snapshot(source)
    if not local.is_dir():
        raise ConfigError(f"{_KEY}: {source} is a file; expected a Dinov2Model folder or a hub id")
    return local.resolve()


def _hub_snapshot(repo_id: str) -> Path:
    from dtr_plugins.core.hf_hub import HubUnavailable, snapshot

    try:
        return snapshot(repo_id, ["config.json", "model.safetensors"])
    except HubUnavailable as why:
        raise ConfigError(f"{_KEY}: cannot load the hub model {repo_id!r}: {why}; give a local Dinov2Model "
                          "folder") from None


def _dinov2_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{_KEY}: cannot read {folder / 'config.json'}: {first_line(exc, limit=200)} (a "
                          f"Dinov2Model save_pretrained folder)") from None
    if not isinstance(config, dict) or config.get("model_type") != "dinov2":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ConfigError(f"{_KEY}: {folder / 'config.json'} is model_type {kind!r}, not 'dinov2' (registers or "
                          f"other models give tokens that do not fit the patch grid)")
    for key in ("hidden_size", "patch_size"):
        if not isinstance(config.get(key), int):
            raise ConfigError(f"{_KEY}: {folder / 'config.json'} has no integer {key}")
    return config
