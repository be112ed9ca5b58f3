"""``dinov2``: DINOv2 CLS features for FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation
metrics and their unfair treatment of diffusion models", NeurIPS), KID and precision/recall.

With ``feature_extractor: dinov2`` the ``fid`` metric is the Fréchet distance on these features, i.e. FD-DINOv2
(the record's ``feature_extractor`` says which features a ``frechet_inception_distance`` value is on).

What their evaluation code (layer6ai-labs/dgm-eval, ``dgm_eval/models/dinov2.py``) does, and what is done here:

- model: torch hub's ``dinov2_vitl14`` by default; here transformers' ``Dinov2Model`` from a hub id
  (default ``facebook/dinov2-large``, the same ViT-L/14 weights) or a local folder (``config.json`` and weights);
- input: each PIL image resized to 224 x 224 (bicubic), ``ToTensor`` (``/ 255``), then normalised with ImageNet's
  mean ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``. Here the ``uint8 [N, 3, H, W]`` batch is
  resized as a tensor (``torch.nn.functional.interpolate``, bicubic, ``antialias=True``: PIL's filter), rounded
  and clipped to ``uint8`` values as PIL's output is, then scaled and normalised the same way. Tensor and PIL
  resampling can differ by one grey level at some pixels: a deviation of the order of JPEG-free round-off.
- features: the model's output, the CLS token after the final layer norm (``x_norm_clstoken``); here
  ``pooler_output``, the same token. ``[N, hidden_size]`` float32 (1024 for ViT-L).

There are no class logits, so ``isc`` (and ``sfid``) are refused with this extractor in one line.
Weights: a local folder is used as is; a hub id is fetched into the Hugging Face cache by the factory (before any
metric runs), or refused in one line when the hub is offline (``HF_HUB_OFFLINE``) and the cache does not hold it.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.extractors.builtin import EvalError, FeatureExtractorSpec

__all__ = ["NAME", "DINOV2_DEFAULT", "dinov2", "dinov2_fidelity_class", "preprocess"]

NAME = "dinov2"
#: dgm-eval's default ``dinov2_vitl14`` on the Hugging Face hub
DINOV2_DEFAULT = "facebook/dinov2-large"
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the weight files a model folder may hold, in the order they are looked for
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LAYER = "cls"


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 3, H, W]`` -> the model's input ``float32 [N, 3, 224, 224]`` (see the module docstring)."""
    y = x.to(torch.float32)
    if tuple(y.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        y = F.interpolate(y, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", align_corners=False, antialias=True)
        y = y.round().clamp(0, 255)
    mean = torch.tensor(IMAGENET_MEAN, device=y.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=y.device).view(1, 3, 1, 1)
    return (y / 255.0 - mean) / std


@functools.cache
def _load(folder: str) -> Any:
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(folder).eval().requires_grad_(False)


@functools.cache
def dinov2_fidelity_class() -> type:
    """The torch-fidelity extractor over a ``Dinov2Model`` folder (``feature_extractor_weights_path``: its weights
    file, the folder is its parent); one layer, ``cls``."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class Dinov2FeatureExtractor(FeatureExtractorBase):
        def __init__(self, fidelity_name: str, features_list: list[str], feature_extractor_weights_path: Any = None,
                     **kwargs: Any):
            super().__init__(fidelity_name, features_list)
            if feature_extractor_weights_path is None:
                raise EvalError(f"{NAME}: no model folder given (the factory resolves one)")
            self.model = _load(str(Path(feature_extractor_weights_path).parent))

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return (LAYER,)

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return {"fid": LAYER, "kid": LAYER, "prc": LAYER}[metric]

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if not (torch.is_tensor(x) and x.dtype == torch.uint8):
                raise ValueError(f"{NAME} expects uint8 images")
            device = next(self.model.parameters()).device
            out = self.model(pixel_values=preprocess(x.to(device))).pooler_output.float()
            return tuple(out for _ in self.features_list)

    return Dinov2FeatureExtractor


def model_folder(model: str) -> Path:
    """The local folder of ``model`` (a folder, a weights file in one, or a hub id fetched into the hub cache);
    :class:`EvalError` (one line) when there is none."""
    path = Path(model).expanduser()
    if path.is_file():
        path = path.parent
    if path.is_dir():
        return path
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        raise EvalError(f"{NAME}: {model!r} is neither a local model folder nor a hub id ORG/NAME")
    try:
        from huggingface_hub import snapshot_download

        from dtr_plugins.core.hf_hub import hub_cache_dir, hub_offline

        return Path(snapshot_download(model, allow_patterns=["config.json", *WEIGHT_FILES], cache_dir=hub_cache_dir(),
                                      local_files_only=hub_offline()))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, network: one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"{NAME}: cannot fetch {model!r} from the hub ({text}); give a local folder with "
                        "eval.weights_path") from None


class Dinov2Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(DINOV2_DEFAULT, description="hub id or local folder of a transformers Dinov2Model")
    weights_path: str | None = Field(None, description="local model folder (or its weights file); replaces model")


def dinov2(model: str = DINOV2_DEFAULT, weights_path: str | None = None) -> FeatureExtractorSpec:
    """The ``dinov2`` factory: resolves the model folder now (so nothing is fetched while metrics run) and names its
    weights file (hashed into ``eval.json``). Raises :class:`EvalError` (one line) for a folder without
    ``config.json`` and weights."""
    folder = model_folder(weights_path or model)
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None or not (folder / "config.json").is_file():
        raise EvalError(f"{NAME}: {folder} holds no Dinov2Model (config.json and one of {', '.join(WEIGHT_FILES)})")
    return FeatureExtractorSpec(name=NAME, weights_path=weights, fidelity_class=dinov2_fidelity_class(),
                                layers={"fid": LAYER, "kid": LAYER, "prc": LAYER})


@hookimpl
def dtr_register_feature_extractors(register):
    register(NAME, dinov2, params=Dinov2Params,
             description="DINOv2 CLS features (FD-DINOv2, Stein et al. 2023): a transformers Dinov2Model from a hub id "
                         "or local folder")
