"""Config -> objects: the model with its routing plan, the diffusion, the loss weighting, the dataset."""
from __future__ import annotations

from typing import Any

from .config import ExperimentConfig
from .plugins import PluginRegistry, default_registry
from .routing import RoutedBackbone, RoutingPlan


def build_strategy_from(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> Any:
    return (registry or default_registry()).build("strategy", cfg.routing.name, **cfg.routing.params)


def build_model(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> RoutedBackbone:
    """The backbone with the routing plan of ``cfg.routing`` attached: ``model(x, t, y=None)``."""
    registry = registry or default_registry()
    model = registry.build("backbone", cfg.backbone.name, **cfg.backbone.params)
    if not isinstance(model, RoutedBackbone):
        raise TypeError(f"backbone '{cfg.backbone.name}' must return a RoutedBackbone, got {type(model).__name__}")
    strategy = build_strategy_from(cfg, registry)
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(), num_tasks=cfg.diffusion.steps))
    return model


def build_diffusion(cfg: ExperimentConfig):
    """The Gaussian diffusion of ``cfg.diffusion`` (guided-diffusion semantics)."""
    from .diffusion import GaussianDiffusion

    return GaussianDiffusion.from_config(cfg.diffusion)


def build_loss_weighting(cfg: ExperimentConfig, registry: PluginRegistry | None = None):
    return (registry or default_registry()).build("loss_weighting", cfg.loss_weighting.name,
                                                  **cfg.loss_weighting.params)


def build_dataset(cfg: ExperimentConfig, registry: PluginRegistry | None = None):
    return (registry or default_registry()).build("dataset", cfg.data.name, **cfg.data.params)
