"""dtr-plugins: task routing for diffusion models.

The public API (DESIGN.md section 6). Plugin authors need only :data:`hookimpl`.
"""
from __future__ import annotations

from typing import Any

from ._version import __version__
from .core.config import ExperimentConfig, load_config
from .core.errors import UserError
from .core.hookspecs import hookimpl
from .core.plugins import build_strategy, list_plugins
from .engine.compose import build_codec, build_components, build_diffusion, build_model


def load_checkpoint(model, path, **kwargs: Any):
    """Load this project's checkpoints, official DiT/DTR releases or guided-diffusion ADM weights."""
    from .core.checkpoint import load_checkpoint as _load

    return _load(model, path, **kwargs)


def from_pretrained(source, **kwargs: Any):
    """Load an exported model folder, a diffusers DiT folder or pipeline, or a hub id (hf://ORG/NAME):
    ``(model, cfg, codec)``."""
    from .engine.hub import from_pretrained as _from_pretrained

    return _from_pretrained(source, **kwargs)


def train(cfg: ExperimentConfig, **kwargs: Any):
    """Train one run (single process or under torchrun); returns the run directory."""
    from .engine.train import train as _train

    return _train(cfg, **kwargs)


def sample(source, **kwargs: Any):
    """Sample images from a run directory, checkpoint, exported folder or hub id; writes PNGs, a grid and an .npz."""
    from .engine.sample import sample as _sample

    return _sample(source, **kwargs)


def evaluate(samples, reference, **kwargs: Any):
    """Score samples against a reference with torch-fidelity (FID, IS, KID, precision/recall)."""
    from .engine.evaluate import evaluate as _evaluate

    return _evaluate(samples, reference, **kwargs)


def run_suite(path, **kwargs: Any):
    """Run an ablation suite and build its report."""
    from .engine.suite import run_suite as _run_suite

    return _run_suite(path, **kwargs)


__all__ = ["hookimpl", "load_config", "list_plugins", "build_strategy", "build_model", "build_diffusion",
           "build_codec", "build_components",
           "load_checkpoint", "from_pretrained", "train", "sample", "evaluate", "run_suite", "ExperimentConfig",
           "UserError", "__version__"]
