"""Config -> objects: the model with its routing plan, the diffusion, the loss weighting, the dataset."""
from __future__ import annotations

from typing import Any

from .config import ExperimentConfig
from .errors import ConfigError
from .plugins import PluginRegistry, default_registry
from .routing import RoutedBackbone, RoutingPlan


def build_strategy_from(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> Any:
    return (registry or default_registry()).build("strategy", cfg.routing.name, **cfg.routing.params)


def build_model(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> RoutedBackbone:
    """The backbone with the routing plan of ``cfg.routing`` attached: ``model(x, t, y=None)``."""
    registry = registry or default_registry()
    info = registry.get("backbone", cfg.backbone.name)
    if getattr(info.factory, "uses_vae", False):
        # A latent backbone: its geometry comes from the VAE, which it keeps (frozen) for encode / decode.
        from dtr_plugins.engine.latents import data_image_size, load_vae, require_vae

        vae = load_vae(require_vae(cfg, f"backbone '{cfg.backbone.name}' works on VAE latents and"))
        params = info.validate(cfg.backbone.params, where="backbone").model_dump()
        model = info.factory(**params, vae=vae, image_size=data_image_size(cfg))
    elif cfg.vae is not None:
        raise ConfigError(f"vae: backbone '{cfg.backbone.name}' works on pixels and does not use a VAE; use a latent "
                          "backbone (latent_dit) or remove the vae section")
    else:
        model = info.build(**cfg.backbone.params)
    if not isinstance(model, RoutedBackbone):
        raise TypeError(f"backbone '{cfg.backbone.name}' must return a RoutedBackbone, got {type(model).__name__}")
    strategy = build_strategy_from(cfg, registry)
    site = cfg.routing.site
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(site), num_tasks=cfg.diffusion.steps, site=site))
    return model


def build_diffusion(cfg: ExperimentConfig):
    """The Gaussian diffusion of ``cfg.diffusion`` (guided-diffusion semantics)."""
    from .diffusion import GaussianDiffusion

    return GaussianDiffusion.from_config(cfg.diffusion)


def build_loss_weighting(cfg: ExperimentConfig, registry: PluginRegistry | None = None):
    return (registry or default_registry()).build("loss_weighting", cfg.loss_weighting.name,
                                                  **cfg.loss_weighting.params)


def build_dataset(cfg: ExperimentConfig, registry: PluginRegistry | None = None):
    """The training data. With a ``vae`` section and a complete latent cache (``dtr cache-latents``) for
    this dataset, image size and VAE: the cached posteriors instead of the images (else a one-line hint)."""
    if cfg.vae is not None:
        from dtr_plugins.engine.latents import cached_dataset

        cached = cached_dataset(cfg)
        if cached is not None:
            return cached
    return (registry or default_registry()).build("dataset", cfg.data.name, **cfg.data.params)
