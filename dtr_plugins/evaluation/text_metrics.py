"""The metrics of text-to-image samples (registry entries ``clip_score`` and ``prompt_class_agreement``).

- ``clip_score``: CLIPScore (Hessel et al. 2021, arXiv 2104.08718, with ``w = 100`` as torchmetrics' ``CLIPScore``):
  ``100 * mean_i max(cos(E_image(x_i), E_text(p_i)), 0)`` with a CLIP model's projected image and text embeddings
  (transformers ``CLIPModel``; its image processor resizes and normalises, grayscale samples are repeated to RGB;
  prompts are truncated to the model's 77 tokens). The model comes from a hub id or a local folder
  (``save_pretrained`` of a ``CLIPModel`` and its ``CLIPProcessor``).
- ``prompt_class_agreement``: for prompts that name a class (the offline caption sets, ``SupportsCaptionClasses``)
  the share of samples the feature extractor's classifier assigns to the prompt's class; computed by the
  evaluator's class accuracy with each sample's prompt class as its label (:func:`prompt_classes`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dtr_plugins.core.contracts import SupportsCaptionClasses
from dtr_plugins.core.errors import ConfigError, first_line

__all__ = ["prompt_classes", "clip_score", "text_scores", "score_text_samples"]


def prompt_classes(params: Any, prompts: Sequence[str]) -> np.ndarray | None:
    """The class of each prompt ``[N]`` int64 when the data's params declare caption classes and every prompt is one
    of their captions; else None (no agreement can be stated)."""
    if not isinstance(params, SupportsCaptionClasses):
        return None
    classes = params.caption_classes()
    if not prompts or any(p not in classes for p in prompts):
        return None
    return np.asarray([classes[p] for p in prompts], dtype=np.int64)


def _load_clip(source: str) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor

    from dtr_plugins.conditioners.clip_text import resolve_folder

    folder, _ = resolve_folder(source, key="text.clip_score_model")
    try:
        return CLIPModel.from_pretrained(str(folder)).eval(), CLIPProcessor.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"text.clip_score_model: cannot load a CLIPModel and CLIPProcessor from {folder}: "
                          f"{first_line(exc, limit=200)}") from None


@torch.no_grad()
def clip_score(images_uint8_nhwc: np.ndarray, prompts: Sequence[str], model_source: str, *, device: Any = "cpu",
               batch_size: int = 64) -> float:
    """CLIPScore of ``images`` (uint8 ``[N, H, W, C]``, C 1 or 3) against ``prompts`` (``N`` texts); see the module
    docstring. Raises ConfigError (one line) for a model that cannot be loaded, ValueError for unequal counts."""
    if len(images_uint8_nhwc) != len(prompts):
        raise ValueError(f"clip_score: {len(images_uint8_nhwc)} images but {len(prompts)} prompts")
    model, processor = _load_clip(model_source)
    model.to(device)
    scores = []
    for start in range(0, len(prompts), batch_size):
        batch = images_uint8_nhwc[start:start + batch_size]
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        inputs = processor(text=list(prompts[start:start + batch_size]), images=list(batch), return_tensors="pt",
                           padding=True, truncation=True)
        image = model.get_image_features(pixel_values=inputs["pixel_values"].to(device))
        text = model.get_text_features(input_ids=inputs["input_ids"].to(device),
                                       attention_mask=inputs["attention_mask"].to(device))
        image = torch.as_tensor(getattr(image, "pooler_output", image))
        text = torch.as_tensor(getattr(text, "pooler_output", text))
        cos = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
        scores.append(100 * cos.clamp(min=0))
    return float(torch.cat(scores).mean()) if scores else float("nan")


def text_scores(result: dict[str, Any], images_uint8_nhwc: np.ndarray, prompts: Sequence[str],
                clip_model: str | None, *, device: Any = "cpu") -> dict[str, Any]:
    """The text-to-image part of an evaluation record: ``prompt_class_agreement`` (the evaluator's
    ``class_accuracy`` against prompt classes, renamed) and, with ``clip_model``, ``clip_score``."""
    out: dict[str, Any] = {}
    if "class_accuracy" in result:
        out["prompt_class_agreement"] = result.pop("class_accuracy")
    if clip_model:
        out["clip_score"] = clip_score(images_uint8_nhwc, prompts, clip_model, device=device)
        out["clip_score_model"] = clip_model
    return out


def score_text_samples(images_uint8_nhwc: np.ndarray, prompts: Sequence[str], cfg: Any, reference: str,
                       settings: Any, device: Any = "cpu") -> dict[str, Any]:
    """A text-to-image run's evaluation record: the evaluator's metrics (``settings``, an
    :class:`~dtr_plugins.evaluation.evaluate.EvalSettings`) against ``reference``, with the prompts' classes as
    labels where the data names them (``prompt_class_agreement``), and ``clip_score`` with ``text.clip_score_model``."""
    from dtr_plugins.compose.build import data_params
    from dtr_plugins.evaluation.evaluate import evaluate_model_samples

    labels = prompt_classes(data_params(cfg), prompts)
    result = evaluate_model_samples(images_uint8_nhwc, labels, reference, settings)
    result.update(text_scores(result, images_uint8_nhwc, prompts, cfg.text.clip_score_model, device=device))
    return result
