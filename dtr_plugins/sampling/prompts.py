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
from dtr_plugins.core.errors import UserError
from dtr_plugins.core.sampling_settings import SamplingSettings

__all__ = ["prompt_labels", "prompt_kwargs", "read_prompts_file", "training_prompts"]


def prompt_labels(settings: SamplingSettings) -> np.ndarray:
    """The prompt index of every image ``[num_samples]``; UserError without prompts or without a prompt encoder
    (the settings' ``prompt_encoder``: the run's text stage)."""
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


def training_prompts(text: TextStage, num: int, seed: int) -> tuple[str, ...]:
    """``num`` captions of the training data drawn with ``numpy.random.default_rng(seed)`` (with replacement):
    the prompts of a text-to-image run's evaluation samples."""
    captions = text.captions or ()
    if not captions:
        raise UserError("text: the training data has no captions to draw evaluation prompts from")
    picks = np.random.default_rng(seed).integers(0, len(captions), size=num)
    return tuple(captions[int(i)] for i in picks)
