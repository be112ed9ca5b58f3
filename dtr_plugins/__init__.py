"""dtr-plugins: task routing for diffusion models.

The public API (docs/design.md, "Python API"). Plugin authors need only :data:`hookimpl`. Every name here
is the implementing function itself (``help(dtr_plugins.sample)`` shows its real signature), imported on first
use: ``import dtr_plugins`` (and the ``dtr`` command before it parses its arguments) loads no torch.

- ``sample(source, ...)``: images to files on disk (PNGs, a grid, an ``.npz``) from a run, checkpoint,
  exported folder or hub id; returns the output folder.
- ``generate(model, diffusion, cfg, num, ...)``: images in memory (uint8 ``[N, H, W, C]`` arrays and their
  labels), as a diffusers pipeline gives them; nothing is written.
- ``DTRPipeline``: a model with ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` (docs/sharing.md);
  ``from_pretrained(source)``: the same loading as a ``(model, cfg, codec)`` tuple.
"""
from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from dtr_plugins._version import __version__
from dtr_plugins.core.errors import UserError
from dtr_plugins.core.hookspecs import hookimpl

# silent unless the user configures logging (docs/architecture.md, "Log output"; the `dtr` command shows it)
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from dtr_plugins.compose import build_codec, build_components, build_diffusion, build_model
    from dtr_plugins.core.checkpoint import load_checkpoint
    from dtr_plugins.core.config import ExperimentConfig, load_config
    from dtr_plugins.core.plugins import build_strategy, list_plugins
    from dtr_plugins.evaluation.evaluate import evaluate
    from dtr_plugins.experiments.suite import run_suite
    from dtr_plugins.sampling.sample import generate, sample
    from dtr_plugins.sharing.hub import from_pretrained
    from dtr_plugins.sharing.pipeline import DTRPipeline
    from dtr_plugins.training.train import train

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    "build_codec": "dtr_plugins.compose",
    "build_components": "dtr_plugins.compose",
    "build_diffusion": "dtr_plugins.compose",
    "build_model": "dtr_plugins.compose",
    "ExperimentConfig": "dtr_plugins.core.config",
    "load_config": "dtr_plugins.core.config",
    "build_strategy": "dtr_plugins.core.plugins",
    "list_plugins": "dtr_plugins.core.plugins",
    "load_checkpoint": "dtr_plugins.core.checkpoint",
    "from_pretrained": "dtr_plugins.sharing.hub",
    "DTRPipeline": "dtr_plugins.sharing.pipeline",
    "train": "dtr_plugins.training.train",
    "sample": "dtr_plugins.sampling.sample",
    "generate": "dtr_plugins.sampling.sample",
    "evaluate": "dtr_plugins.evaluation.evaluate",
    "run_suite": "dtr_plugins.experiments.suite",
}


def __getattr__(name: str) -> Any:
    """The lazily imported public functions (PEP 562); anything else is an AttributeError."""
    if name not in _LAZY:
        raise AttributeError(f"module 'dtr_plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["hookimpl", "load_config", "list_plugins", "build_strategy", "build_model", "build_diffusion",
           "build_codec", "build_components",
           "load_checkpoint", "from_pretrained", "DTRPipeline", "train", "sample", "generate", "evaluate", "run_suite",
           "ExperimentConfig", "UserError", "__version__"]
