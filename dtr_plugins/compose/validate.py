"""Validation: everything ``dtr train`` would refuse before its first step, found by inspecting the objects
:func:`~dtr_plugins.compose.build.compose` built (on the meta device for ``dtr validate``), so that
``dtr validate`` and ``dtr train`` refuse the same configs with the same one line.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import torch

from dtr_plugins.compose.build import (
    Components,
    backbone_input_space,
    build_diffusion,
    build_loss_weighting,
    build_strategy_from,
    check_composition,
    compose,
    data_params,
)
from dtr_plugins.compose.regularize import build_regularizer
from dtr_plugins.compose.schedules import build_ema, build_timestep_rule
from dtr_plugins.compose.text import check_captioned
from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.contracts import Backbone, DiffusionProcess, LearnedRoutingStrategy, SupportsImageShape
from dtr_plugins.core.errors import ConfigError, UserError
from dtr_plugins.core.guidance import check_guidance
from dtr_plugins.core.io import creatable_folder_problem
from dtr_plugins.core.labels import check_label_space
from dtr_plugins.core.plugins import PluginRegistry, default_registry
from dtr_plugins.core.routing import RoutedBackbone, declared_backbone_class
from dtr_plugins.core.timesteps import training_sampler

__all__ = ["check_device", "check_machine", "check_run", "check_buckets", "validate_run"]


def check_device(name: str, local_rank: int = 0, key: str = "train.device") -> None:
    """ConfigError (one line naming ``key``, the allowed values) unless device ``name`` exists on this machine."""
    from dtr_plugins.core.config import DEVICE_PATTERN, DEVICES_ALLOWED

    if not DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(f"{key}: unknown device {name!r} (allowed: {DEVICES_ALLOWED})")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or local_rank)
        if count == 0:
            raise ConfigError(f"{key}: {name!r} but this machine has no CUDA device; use auto or cpu "
                              f"(allowed: {DEVICES_ALLOWED})")
        if index >= count:
            raise ConfigError(f"{key}: {name!r} needs cuda:{index} but this machine has {count} CUDA "
                              f"device(s) (cuda:0..cuda:{count - 1}); allowed: {DEVICES_ALLOWED}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}: 'mps' but this machine has no MPS device; use auto or cpu "
                          f"(allowed: {DEVICES_ALLOWED})")


def check_machine(cfg: ExperimentConfig) -> None:
    """This machine's checks, before anything is built: the device exists and the global batch splits over
    the ranks (``WORLD_SIZE``). Raises :class:`ConfigError` (one line)."""
    check_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.train.batch_size % world:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is not divisible by the world size {world}")


def _check_respacing(cfg: ExperimentConfig, process: DiffusionProcess) -> None:
    """The process's own check of the sample settings (sampler names, respacing against its steps)."""
    process.check_sample_settings(cfg.sample.sampler, cfg.sample.respacing)


def _check_sizes(cfg: ExperimentConfig, model: Backbone, registry: PluginRegistry) -> None:
    """Pixel backbones: ``data.image_size`` and the data's channels against the backbone's input."""
    info = registry.get("backbone", cfg.backbone.name)
    params = data_params(cfg, registry)
    if backbone_input_space(info) != "pixels" or not isinstance(params, SupportsImageShape):
        return
    channels, size, _ = params.image_shape()
    if size != model.input_size:
        raise ConfigError(f"data.image_size: {size} but backbone '{cfg.backbone.name}' expects {model.input_size}px "
                          f"images (backbone.input_size); make them equal")
    if channels != model.in_channels:
        raise ConfigError(f"data: '{cfg.dataset.name}' gives {channels}-channel images but backbone.in_channels is "
                          f"{model.in_channels}; set backbone.in_channels to {channels}, or give the data "
                          f"{model.in_channels}-channel images")


def _check_eval(cfg: ExperimentConfig, registry: PluginRegistry, machine: bool = True) -> None:
    from dtr_plugins.evaluation.metrics import check_eval_settings
    from dtr_plugins.evaluation.references import check_config_reference
    from dtr_plugins.extractors.builtin import resolve_inception_weights

    name = cfg.eval.feature_extractor
    known = registry.names("feature_extractor")
    if name not in known:
        raise ConfigError(f"eval.feature_extractor: unknown feature extractor {name!r} "
                          f"(known: {', '.join(known) or 'none installed'})")
    if cfg.eval.feature_extractor_params:  # its keys and values, as the extractor's params model allows them
        if "weights_path" in cfg.eval.feature_extractor_params:
            raise ConfigError("eval.feature_extractor_params.weights_path: set eval.weights_path instead")
        registry.get("feature_extractor", name).validate(dict(cfg.eval.feature_extractor_params),
                                                         where="eval.feature_extractor_params")
    if not (cfg.eval.at_end or cfg.eval.every):
        return  # no evaluation during training
    check_eval_settings(cfg.eval, cfg.eval.num_samples)
    if "sfid" in cfg.eval.metrics and name != "inception-v3-compat":  # the one extractor with the spatial layer
        raise ConfigError(f"eval.metrics: sfid reads Inception's spatial features; it needs eval.feature_extractor "
                          f"inception-v3-compat (got {name!r})")
    check_config_reference(cfg, registry, machine)
    if not machine:
        return
    try:
        if name == "inception-v3-compat":  # never downloaded: its weights must be here before training starts
            resolve_inception_weights(cfg.eval.weights_path)
        elif cfg.eval.weights_path and not Path(cfg.eval.weights_path).expanduser().is_file():
            raise ConfigError(f"weights file {cfg.eval.weights_path!r} not found")
    except UserError as exc:
        raise ConfigError(f"eval.weights_path: {exc} (or set eval.at_end: false and eval.every: 0)") from None


def _check_output(cfg: ExperimentConfig, run_dir: str | Path | None) -> None:
    """The output folder and the run folder must be folders this process can create or write into."""
    paths = [("output_dir", Path(cfg.output_dir))]
    paths.append(("--run-dir", Path(run_dir)) if run_dir is not None else ("name", Path(cfg.output_dir) / cfg.name))
    for key, path in paths:
        problem = creatable_folder_problem(path)  # the nearest existing part: a file, or no folder can be made in it
        if problem:
            raise ConfigError(f"{key}: {problem}; choose another {key}")


def _check_init_from(path: str | None) -> None:
    """``train.init_from`` must name an existing checkpoint file (its contents are checked when it is loaded)."""
    if path is not None and not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "does not exist"
        raise ConfigError(f"train.init_from: {path} {what} (allowed: a checkpoint file, e.g. an official DiT .pt)")


def check_buckets(cfg: ExperimentConfig, backbone: type[RoutedBackbone] | None, learned: bool) -> None:
    """``train.timestep_buckets`` needs a routing site the backbone runs in buckets (``bucketed_sites``: DiT's
    heads, mlp, heads_mlp); a learned strategy is not refused (training falls back to the masked path and says
    so). ``backbone`` None (a factory that declares no class): checked when training applies it. Raises
    :class:`ConfigError` (one line: the key, the value, what is allowed)."""
    setting = cfg.train.timestep_buckets
    if setting == 0 or learned or backbone is None or cfg.routing.site in backbone.bucketed_sites:
        return
    sites = backbone.bucketed_sites
    allowed = f"0, or routing.site one of {', '.join(sites)}" if sites else \
        f"0: backbone '{cfg.backbone.name}' runs no routing site in buckets"
    raise ConfigError(f"train.timestep_buckets: {setting!r} with routing.site {cfg.routing.site!r} of backbone "
                      f"'{cfg.backbone.name}' (allowed: {allowed})")


def check_run(cfg: ExperimentConfig, parts: Components, registry: PluginRegistry | None = None, *,
              run_dir: str | Path | None = None, machine: bool = True) -> None:
    """The checks on a composed run (``parts``, built by :func:`compose` on any device, meta included): the
    respacing fits the process, the evaluation settings and their prerequisites (Inception weights) are
    there, the output paths are folders, the backbone fits the data sizes, guidance has a null class
    (:func:`~dtr_plugins.core.guidance.check_guidance`) and the dataset's classes fit the backbone's labels. The
    data's held-out split was opened, and the routing plan (every task gets channels at
    ``routing.site``) was checked when it was built.
    ``machine=False``: no weights-file or output-folder checks. Raises :class:`ConfigError` (one line)."""
    registry = registry or default_registry()
    _check_respacing(cfg, parts.diffusion)
    _check_eval(cfg, registry, machine)
    prompts = cfg.text.eval_prompts if cfg.text is not None and (cfg.eval.at_end or cfg.eval.every) else None
    if machine and prompts and not Path(prompts).expanduser().is_file():
        raise ConfigError(f"text.eval_prompts: {prompts} is not a file (a prompts file or a COCO captions .json)")
    if machine:
        _check_output(cfg, run_dir)
        _check_init_from(cfg.train.init_from)
    backbone = cast(Backbone, parts.model)
    plan = parts.model.plan
    check_buckets(cfg, type(parts.model), plan is not None and plan.is_learned)
    _check_sizes(cfg, backbone, registry)
    check_guidance(backbone, cfg.sample.cfg_scale, "sample.cfg_scale")
    if parts.dataset is not None:  # it exists, decodes its index, and its classes fit the backbone's labels
        check_label_space(backbone.num_classes, parts.dataset, cfg.dataset.name)


def validate_run(cfg: ExperimentConfig, registry: PluginRegistry | None = None, *,
                 run_dir: str | Path | None = None, machine: bool = True,
                 allow_unsafe_load: bool = False) -> Components | None:
    """Everything :func:`~dtr_plugins.training.train.train` would find before its first step, at tiny cost and
    without writing anything: :func:`check_machine`, then :func:`compose` on the meta device (the codec fits
    the backbone, the routing plan gives every task channels at ``routing.site``) and :func:`check_run` on
    what it built, then loads ``train.init_from``'s checkpoint into the meta model as fine-tuning will
    (:func:`~dtr_plugins.core.checkpoint.load_init_from`, the one loader of both; ``allow_unsafe_load`` as
    ``dtr train --allow-unsafe-load``). ``dtr train`` runs the same checks on the run it composes for training.

    ``machine=False`` (``dtr validate --config-only``) checks the config alone, not this machine: no device,
    weights-file, codec (hub VAE), data or output-folder checks; a latent backbone is then not built (None
    is returned). Returns the meta-device :class:`Components`. Raises :class:`ConfigError` /
    :class:`PluginError` (one line)."""
    registry = registry or default_registry()
    cfg.dataset  # noqa: B018 (a training config needs its data section: the one-line ConfigError when missing)
    if machine:
        check_machine(cfg)
    check_composition(cfg, registry)
    info = registry.get("backbone", cfg.backbone.name)
    if not machine and backbone_input_space(info) == "latents":  # its geometry may need a codec download
        process = build_diffusion(cfg, registry)
        _check_respacing(cfg, process)
        training_sampler(process, build_loss_weighting(cfg, registry), cfg.loss_weighting.name,
                         build_timestep_rule(cfg, registry), cfg.timesteps.name if cfg.timesteps else "")
        build_ema(cfg, registry)
        _check_eval(cfg, registry, machine)
        check_buckets(cfg, declared_backbone_class(info.factory),
                      isinstance(build_strategy_from(cfg, registry), LearnedRoutingStrategy))
        check_captioned(cfg, registry)
        return None
    parts = compose(cfg, registry, device="meta", data=machine, text=machine)
    check_run(cfg, parts, registry, run_dir=run_dir, machine=machine)
    if machine:  # its encoder's weights (a local folder, the hub cache) are this machine's
        parts.regularizer = build_regularizer(parts, registry)
        if cfg.train.init_from is not None:
            from dtr_plugins.core.checkpoint import load_init_from

            load_init_from(parts.model, cfg.train.init_from, allow_unsafe=allow_unsafe_load)
    return parts
