"""Prompts of a text-to-image model at sampling time (``dtr sample RUN --prompt ... / --prompts-file``).

Image ``i`` is made from prompt ``i mod P`` of the ``P`` prompts given; its "label" in ``samples.npz`` is that
prompt's index, and ``samples.json`` lists the prompts. Each batch's prompts are encoded through the run's text
stage (its embedding cache); guidance uses the empty caption's condition as the null ``y``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dtr_plugins.conditioners.text_cache import TextStage
from dtr_plugins.core.contracts import SupportsTextConditioning
from dtr_plugins.core.errors import UserError
from dtr_plugins.core.guidance import check_guidance
from dtr_plugins.core.sampling_settings import SamplingSettings

__all__ = ["prompted", "prompt_labels", "prompt_kwargs", "read_prompts_file", "evaluation_prompts"]


def prompted(model: Any, settings: SamplingSettings) -> bool:
    """The model is text-conditioned (its images come from prompts), or prompts were given (then refused)."""
    return isinstance(model, SupportsTextConditioning) or settings.prompts is not None


def prompt_labels(model: Any, settings: SamplingSettings) -> np.ndarray:
    """The prompt index of every image ``[num_samples]``, after the guidance check; UserError for prompts given to
    a model that reads no text, and for a text model without prompts or a prompt encoder (the settings'
    ``prompt_encoder``: the run's text stage)."""
    if not isinstance(model, SupportsTextConditioning):
        raise UserError("--prompt: this model is not text-conditioned, so prompts would not be applied; leave out "
                        "--prompt / --prompts-file")
    check_guidance(model, settings.cfg_scale, settings.key("cfg_scale"))
    if settings.prompt_encoder is None:
        raise UserError("--prompt: this model is text-conditioned but its run has no text section to encode "
                        "prompts with (an exported model: sample from its run directory)")
    if not settings.prompts:
        raise UserError("--prompt: this model is text-conditioned; give --prompt TEXT (repeatable) or "
                        "--prompts-file FILE (one prompt per line)")
    if settings.labels is not None:
        raise UserError("--labels: a text-conditioned model takes prompts, not class labels; leave out --labels")
    return np.arange(settings.num_samples, dtype=np.int64) % len(settings.prompts)


def prompt_kwargs(text: TextStage, settings: SamplingSettings, indices: np.ndarray, device: Any) -> dict[str, Any]:
    """``model_kwargs`` of one batch: ``y`` (the prompts' conditions) and, when guided, ``y_null``."""
    assert settings.prompts is not None
    kwargs: dict[str, Any] = {"y": text.prompts([settings.prompts[int(i)] for i in indices], device)}
    if settings.guided:
        kwargs["y_null"] = text.null(device)
    return kwargs


def read_prompts_file(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file; UserError naming the file when it cannot be read or is empty."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts-file: cannot read {path}: {type(exc).__name__}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"--prompts-file: {path} holds no prompt (one per line)")
    return prompts


def evaluation_prompts(text: TextStage, num: int, seed: int, source: str | None = None) -> tuple[str, ...]:
    """The ``num`` prompts of a text-to-image run's evaluation samples, drawn with
    ``numpy.random.default_rng(seed)``: from ``source`` (``text.eval_prompts``) when given, else from the training
    captions (one item drawn with replacement, then one of its captions).

    ``source``: a text file (one prompt per line; taken in order, repeated to ``num``) or a COCO captions ``.json``
    (U-ViT's protocol: one caption drawn per image, images in increasing id, cycled to ``num``). Raises UserError
    (one line naming ``text.eval_prompts``) for a file that cannot be read."""
    rng = np.random.default_rng(seed)
    if source is None:
        sets = text.caption_sets or ()
        if not sets:
            raise UserError("text: the training data has no captions to draw evaluation prompts from")
        items = rng.integers(0, len(sets), size=num)
        return tuple(sets[int(i)][int(rng.integers(0, len(sets[int(i)])))] for i in items)
    if source.lower().endswith(".json"):
        from dtr_plugins.data.captioned_images import CocoCaptionsParams

        try:
            per_image = CocoCaptionsParams(images=".", annotations=source).caption_sets()
        except UserError as exc:
            raise UserError(f"text.eval_prompts: {exc}") from None
        drawn = [captions[int(rng.integers(0, len(captions)))] for captions in per_image]
    else:
        try:
            drawn = read_prompts_file(source)
        except UserError as exc:
            raise UserError(f"text.eval_prompts: {str(exc).removeprefix('--prompts-file: ')}") from None
    return tuple(drawn[i % len(drawn)] for i in range(num))
