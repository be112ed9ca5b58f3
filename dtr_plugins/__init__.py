"""dtr-plugins: task routing for diffusion models.

The public API (DESIGN.md section 6). Plugin authors need only :data:`hookimpl`.
"""
from __future__ import annotations

from typing import Any

from dtr_plugins._version import __version__
from dtr_plugins.compose import build_codec, build_components, build_diffusion, build_model
from dtr_plugins.core.config import ExperimentConfig, load_config
from dtr_plugins.core.errors import UserError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import build_strategy, list_plugins


def load_checkpoint(model, path, **kwargs: Any):
    """Load this project's checkpoints, official DiT/DTR releases or guided-diffusion ADM weights."""
    from dtr_plugins.core.checkpoint import load_checkpoint as _load

    return _load(model, path, **kwargs)


def from_pretrained(source, **kwargs: Any):
    """Load an exported model folder, a diffusers DiT folder or pipeline, or a hub id (hf://ORG/NAME):
    ``(model, cfg, codec)``."""
    from dtr_plugins.sharing.hub import from_pretrained as _from_pretrained

    return _from_pretrained(source, **kwargs)


def train(cfg: ExperimentConfig, **kwargs: Any):
    """Train one run (single process or under torchrun); returns the run directory."""
    from dtr_plugins.training.train import train as _train

    return _train(cfg, **kwargs)


def sample(source, **kwargs: Any):
    """Sample images from a run directory, checkpoint, exported folder or hub id; writes PNGs, a grid and an .npz."""
    from dtr_plugins.sampling.sample import sample as _sample

    return _sample(source, **kwargs)


def evaluate(samples, reference, **kwargs: Any):
    """Score samples against a reference with torch-fidelity (FID, IS, KID, precision/recall)."""
    from dtr_plugins.evaluation.evaluate import evaluate as _evaluate

    return _evaluate(samples, reference, **kwargs)


def run_suite(path, **kwargs: Any):
    """Run an ablation suite and build its report."""
    from dtr_plugins.experiments.suite import run_suite as _run_suite

    return _run_suite(path, **kwargs)


__all__ = ["hookimpl", "load_config", "list_plugins", "build_strategy", "build_model", "build_diffusion",
           "build_codec", "build_components",
           "load_checkpoint", "from_pretrained", "train", "sample", "evaluate", "run_suite", "ExperimentConfig",
           "UserError", "__version__"]
