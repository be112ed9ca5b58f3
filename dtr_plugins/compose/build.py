"""The composition root: config -> objects. Nothing else turns a config into plugin objects.

:func:`compose` gives everything a run needs (:class:`Components`), each built once: the codec (the image <->
denoiser-space stage), the backbone with its routing plan, the diffusion, the loss weighting, the
dataset and the :class:`ModelInput` stage that turns a data batch into the denoiser's ``x0``. Each
``build_*`` function is usable on its own; they take an optional plugin registry (default: every
installed plugin).

The codec of a config: a ``codec: {name, **params}`` section; else ``autoencoder_kl`` when a ``vae``
section is given (its shorthand); else ``identity`` (pixels). A backbone whose class declares
``input_space = "latents"`` gets ``in_channels`` and ``input_size`` from the codec's latent shape of
``data.image_size`` images (explicit values must agree); a pixel backbone refuses a non-identity codec.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from dtr_plugins.codecs.latent_cache import (
    CacheSettings,
    LatentCacheDataset,
    cache_key,
    cache_root,
    draw_latents,
    is_complete,
    write_cache,
)
from dtr_plugins.compose.heldout import open_heldout_split
from dtr_plugins.compose.schedules import build_ema, build_timestep_rule
from dtr_plugins.compose.text import build_text_stage, check_text
from dtr_plugins.compose.tokens import attach_token_router
from dtr_plugins.conditioners.text_cache import TextStage
from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.contracts import (
    Backbone,
    Codec,
    DiffusionProcess,
    EmaRule,
    InputSpace,
    LearnedRoutingStrategy,
    NoiseAxis,
    Regularizer,
    RoutingStrategy,
    SupportsAugmentation,
    SupportsContentKey,
    SupportsImageShape,
    SupportsLogSNR,
    SupportsNoiseSchedule,
    TimestepSampler,
    missing_members,
)
from dtr_plugins.core.errors import ConfigError, PluginError, UserError, first_line
from dtr_plugins.core.plugins import PluginInfo, PluginRegistry, default_registry
from dtr_plugins.core.routing import RoutedBackbone, RoutingPlan, routed_units
from dtr_plugins.core.timesteps import choose_sampler

logger = logging.getLogger(__name__)

IDENTITY = "identity"

__all__ = ["CodecSpec", "Components", "ModelInput", "codec_spec", "build_codec", "build_strategy_from",
           "build_model", "build_routing_plan", "build_diffusion", "build_loss_weighting", "build_dataset",
           "build_components", "compose", "check_composition", "image_shape", "latent_cache_root", "cache_latents",
           "backbone_input_space"]


# ----------------------------------------------------------------------------------------- codec
@dataclass(frozen=True)
class CodecSpec:
    """Which codec a config uses, with what parameters, and where its latent cache lives."""

    name: str
    params: dict[str, Any]
    cache: CacheSettings | None = None
    section: str = "codec"  # the config section it came from (for error messages)

    @property
    def is_identity(self) -> bool:
        return self.name == IDENTITY


def codec_spec(cfg: ExperimentConfig) -> CodecSpec:
    """The codec named by ``cfg`` (``codec`` section, ``vae`` shorthand, or ``identity``)."""
    if cfg.codec is not None:
        c = cfg.codec
        return CodecSpec(c.name, c.params, CacheSettings(c.cache_dir, c.shard_size, c.cache_dtype, c.cache_batch_size),
                         "codec")
    if cfg.vae is not None:
        v = cfg.vae
        return CodecSpec("autoencoder_kl", {"path": v.path, "scale_factor": v.scale_factor, "batch_size": v.batch_size},
                         CacheSettings(v.cache_dir, v.shard_size, v.cache_dtype, v.batch_size), "vae")
    return CodecSpec(IDENTITY, {})


def build_codec(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> Codec:
    """The codec of ``cfg`` (for ``autoencoder_kl`` only its config is read; weights load on first use)."""
    spec = codec_spec(cfg)
    info = (registry or default_registry()).get("codec", spec.name)
    codec = info.build(**spec.params)
    _check_contract(codec, Codec, "codec", info)
    return codec


def _check_contract(obj: Any, protocol: type, kind: str, info: PluginInfo) -> None:
    missing = missing_members(obj, protocol)
    if missing:
        raise PluginError(f"{kind} '{info.name}' ({info.plugin}, distribution {info.distribution or 'unknown'}) "
                          f"lacks {', '.join(missing)} of dtr_plugins.core.contracts.{protocol.__name__}")


def data_params(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> BaseModel:
    """``cfg.data``'s params as its dataset plugin's params model (where its optional capabilities live)."""
    return (registry or default_registry()).get("dataset", cfg.dataset.name).validate(cfg.dataset.params, where="data")


def image_shape(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the data, as its params model declares it (:class:`SupportsImageShape`); a
    ConfigError when the dataset declares none (a codec needs the geometry)."""
    params = data_params(cfg, registry)
    if not isinstance(params, SupportsImageShape):
        raise ConfigError(f"data.name: dataset '{cfg.dataset.name}' declares no image shape (its params model has no "
                          f"image_shape(); see SupportsImageShape in dtr_plugins/core/contracts.py), which a codec "
                          f"or latent backbone needs")
    channels, height, width = (int(n) for n in params.image_shape())
    return channels, height, width


# -------------------------------------------------------------------------------------- backbone
def backbone_input_space(info: PluginInfo) -> InputSpace:
    """``input_space`` of a backbone plugin: its class attribute; factories that are not a
    :class:`RoutedBackbone` subclass are pixel backbones."""
    factory = info.factory
    if isinstance(factory, type) and issubclass(factory, RoutedBackbone):
        return factory.input_space
    return "pixels"


def _backbone_params(cfg: ExperimentConfig, info: PluginInfo, spec: CodecSpec,
                     codec: Codec | None, registry: PluginRegistry) -> tuple[dict[str, Any], Codec | None]:
    """The backbone's params with the latent geometry filled in (latent backbones), checked against the codec."""
    name = cfg.backbone.name
    params = dict(cfg.backbone.params)
    if backbone_input_space(info) == "pixels":
        if not spec.is_identity:
            raise ConfigError(f"{spec.section}: backbone '{name}' works on pixels and does not use a VAE; use a "
                              f"latent backbone (latent_dit) or remove the {spec.section} section")
        return params, codec
    if spec.is_identity:
        raise ConfigError(f"vae.path: backbone '{name}' works on VAE latents and needs a vae section, e.g. "
                          f"vae: {{path: stabilityai/sd-vae-ft-ema}} (a hub id or a local diffusers folder), "
                          f"or a codec section")
    codec = codec if codec is not None else build_codec(cfg, registry)
    if cfg.data is None:  # a model-only config (a loaded model): the backbone states its own latent geometry
        for key in ("in_channels", "input_size"):
            if params.get(key) is None:
                raise ConfigError(f"backbone.{key}: a config without a data section states the latent backbone's "
                                  f"in_channels and input_size")
        return params, codec
    shape = image_shape(cfg, registry)
    channels, height, width = codec.latent_shape(shape)
    if height != width:
        raise ConfigError(f"data.image_size: codec '{spec.name}' gives non-square {height}x{width} latents")
    for key, derived in (("in_channels", channels), ("input_size", height)):
        given = params.get(key)
        if given is None:
            params[key] = derived
        elif given != derived:
            raise ConfigError(f"backbone.{key}: {given} disagrees with {derived} from the codec '{spec.name}' "
                              f"({spec.section}) for {shape[1]}px images; remove the key or set it to {derived}")
    return params, codec


def check_composition(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> None:
    """The checks of :func:`build_model` that need no codec weights, config or files: does the backbone's
    input space match the codec? (``dtr validate`` runs this.)"""
    registry = registry or default_registry()
    info = registry.get("backbone", cfg.backbone.name)
    spec = codec_spec(cfg)
    latent = backbone_input_space(info) == "latents"
    if latent and spec.is_identity or not latent and not spec.is_identity:
        _backbone_params(cfg, info, spec, None, registry)  # raises the one-line error


def build_strategy_from(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> Any:
    """The strategy of ``cfg.routing``: static (:class:`RoutingStrategy`) or learned
    (:class:`LearnedRoutingStrategy`), told apart by their Protocols; neither is one :class:`PluginError`."""
    registry = registry or default_registry()
    strategy = registry.build("strategy", cfg.routing.name, **cfg.routing.params)
    if not isinstance(strategy, (RoutingStrategy, LearnedRoutingStrategy)):
        info = registry.get("strategy", cfg.routing.name)
        learned = missing_members(strategy, LearnedRoutingStrategy)
        raise PluginError(f"strategy '{info.name}' of {info.origin} is neither a static strategy (lacks mask_table) "
                          f"nor a learned one (lacks {', '.join(learned)}); see dtr_plugins.core.contracts")
    return strategy


def build_routing_plan(cfg: ExperimentConfig, routed_channels: list[int],
                       registry: PluginRegistry | None = None, *, cond_dim: int | None = None,
                       process: DiffusionProcess | None = None) -> RoutingPlan:
    """The routing plan of ``cfg.routing`` for layers of the given widths (no model needed).

    A learned strategy (:class:`~dtr_plugins.core.contracts.LearnedRoutingStrategy`) is bound here to those
    layers (``cond_dim``: the backbone's ``routing_cond_dim()``), before any optimizer exists. ``process``:
    the run's process when already built (it says what a routing task is: an index or a continuous u)."""
    registry = registry or default_registry()
    strategy = build_strategy_from(cfg, registry)
    process = process if process is not None else build_diffusion(cfg, registry)
    try:
        plan = RoutingPlan(strategy, routed_channels, num_tasks=process.num_timesteps,
                           continuous=process.continuous_tasks(strategy), site=cfg.routing.site, cond_dim=cond_dim)
        if plan.time_experts is not None:  # time experts place their boundaries on the process's noise levels
            plan.time_experts.bind_noise(noise_axis(process, continuous=plan.continuous is not None))
    except UserError:
        raise
    except Exception as exc:  # a strategy whose mask_table raises: a bug in its plugin
        info = registry.get("strategy", cfg.routing.name)
        raise PluginError(f"routing.name: strategy '{info.name}' of {info.origin} failed to build its routing "
                          f"(mask tables or bind): {first_line(exc)}") from exc
    _check_no_empty_rows(cfg, plan)
    return plan


def noise_axis(process: DiffusionProcess, *, continuous: bool) -> NoiseAxis:
    """The process's noise levels for a time-expert strategy: ``T``, the kind of task, and the log-SNR on the grid
    of :class:`~dtr_plugins.core.contracts.NoiseAxis` (discrete: ``log(abar_t / (1 - abar_t))`` from
    ``SupportsNoiseSchedule``; continuous: ``SupportsLogSNR`` at ``u = (k + 1/2) / T``; else None) and a reader of
    a trained run's metrics records (measured boundaries)."""
    steps = int(process.num_timesteps)
    log_snr = None
    if not continuous and isinstance(process, SupportsNoiseSchedule):
        abar = np.asarray(process.alphas_cumprod, dtype=np.float64)
        log_snr = np.log(abar) - np.log1p(-abar)
    elif continuous and isinstance(process, SupportsLogSNR):
        log_snr = np.asarray(process.log_snr((np.arange(steps, dtype=np.float64) + 0.5) / steps), dtype=np.float64)
    return NoiseAxis(num_tasks=steps, continuous=continuous, log_snr=log_snr, run_records=_run_records)


def _run_records(run_dir: str) -> list[dict[str, Any]]:
    """The metrics records of a trained run directory (its owner, ``RunDir``, reads them)."""
    from dtr_plugins.runs.rundir import RunDir

    return RunDir(run_dir).read_metrics()


def _check_no_empty_rows(cfg: ExperimentConfig, plan: RoutingPlan) -> None:
    """A task that gets no channels in a routed layer skips every routed block there: refuse the plan."""
    for table, layers in plan.tables():
        empty = ~table.any(dim=1)
        if not bool(empty.any()):
            continue
        width = int(table.shape[1])
        tasks = int(empty.sum())
        if "beta" in cfg.routing.params:  # dtr and random: floor(beta * C) channels per task
            smallest = math.ceil(10_000 / width) / 10_000
            while math.floor(smallest * width) < 1:
                smallest += 1e-4
            raise ConfigError(f"routing.beta: {cfg.routing.params['beta']} gives {tasks} of {plan.num_tasks} tasks no "
                              f"channels in routed layers of width {width}; the smallest allowed value for that width "
                              f"is {smallest:.4g}")
        raise ConfigError(f"routing: {plan.strategy_repr} gives {tasks} of {plan.num_tasks} tasks no channels in "
                          f"routed layers of width {width} (layers {layers}); every routed block "
                          f"would be skipped for them")


def build_model(cfg: ExperimentConfig, registry: PluginRegistry | None = None, *, codec: Codec | None = None,
                process: DiffusionProcess | None = None, meta: bool = False) -> RoutedBackbone:
    """The backbone with the routing plan of ``cfg.routing`` (and the token router of ``cfg.token_routing``)
    attached: ``model(x, t, y=None)``.

    ``codec`` / ``process``: the run's codec and process when already built (latent backbones read their
    geometry from the codec; the plan's tasks come from the process). ``meta``: build the backbone on the
    meta device (shapes only: no memory, no initialisation; what ``dtr validate`` inspects).
    """
    registry = registry or default_registry()
    info = registry.get("backbone", cfg.backbone.name)
    params, _ = _backbone_params(cfg, info, codec_spec(cfg), codec, registry)
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = info.build(**params)
    except ConfigError as exc:
        if backbone_input_space(info) == "latents":
            shape = "x".join(map(str, image_shape(cfg, registry)))
            raise ConfigError(f"{exc} (in_channels={params['in_channels']} and input_size={params['input_size']} "
                              f"come from the codec's latents of the data's {shape} images)") from None
        raise
    if not isinstance(model, RoutedBackbone):
        raise PluginError(f"backbone '{cfg.backbone.name}' ({info.plugin}) must return a RoutedBackbone, got "
                          f"{type(model).__name__}")
    _check_contract(model, Backbone, "backbone", info)
    model.attach_routing(build_routing_plan(cfg, routed_units(model, cfg.routing.site), registry,
                                            cond_dim=model.routing_cond_dim(), process=process))
    attach_token_router(cfg, model, registry)  # token_routing (tread): training forwards only
    return model


# ------------------------------------------------------------------------------ diffusion, loss
def build_diffusion(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> DiffusionProcess:
    """The process of ``cfg.diffusion`` (a ``process`` plugin: ``gaussian`` by default, ``flow_matching``)."""
    process = cfg.validated_process()  # built (and checked) when the config was validated
    if process is None:
        process = (registry or default_registry()).build("process", cfg.diffusion.name, **cfg.diffusion.params)
    if not isinstance(process, DiffusionProcess):
        missing = ", ".join(missing_members(process, DiffusionProcess))
        raise PluginError(f"process '{cfg.diffusion.name}' must return a DiffusionProcess (see "
                          f"dtr_plugins/core/contracts.py), got {type(process).__name__} missing {missing}")
    return process


def build_loss_weighting(cfg: ExperimentConfig, registry: PluginRegistry | None = None):
    return (registry or default_registry()).build("loss_weighting", cfg.loss_weighting.name,
                                                  **cfg.loss_weighting.params)


# ------------------------------------------------------------------------------------ data, cache
def latent_cache_root(cfg: ExperimentConfig, codec: Codec,
                      registry: PluginRegistry | None = None) -> tuple[Path, dict[str, Any]]:
    """``(cache folder, key)`` of ``cfg``'s latent cache for ``codec`` (a non-identity codec)."""
    spec = codec_spec(cfg)
    if spec.cache is None:
        raise ConfigError("vae.path: a latent cache needs a vae section, e.g. vae: {path: stabilityai/sd-vae-ft-ema} "
                          "(a hub id or a local diffusers folder), or a codec section")
    params = data_params(cfg, registry)
    if isinstance(params, SupportsAugmentation):  # one cache for every augmentation setting
        params = params.unaugmented()
    identity = params.content_key() if isinstance(params, SupportsContentKey) else params.model_dump(mode="json")
    key = cache_key(cfg.dataset.name, identity, image_shape(cfg, registry)[1], spec.name, codec, spec.cache.dtype)
    base = Path(spec.cache.cache_dir).expanduser() if spec.cache.cache_dir else Path(cfg.output_dir) / "latent_cache"
    return cache_root(base, key), key


def build_dataset(cfg: ExperimentConfig, registry: PluginRegistry | None = None, *, codec: Codec | None = None):
    """The training data. With a non-identity codec and a complete latent cache (``dtr cache-latents``)
    for this dataset, image size and codec content: the cached posteriors instead of the images (else
    the images, and a one-line hint logged as a warning)."""
    registry = registry or default_registry()
    spec = codec_spec(cfg)
    if not spec.is_identity:
        codec = codec if codec is not None else build_codec(cfg, registry)
        root, key = latent_cache_root(cfg, codec, registry)
        if is_complete(root, key):
            params = data_params(cfg, registry)
            flip = isinstance(params, SupportsAugmentation) and params.random_hflip()
            return LatentCacheDataset(root, random_flip=bool(flip))
        if os.environ.get("RANK", "0") == "0":
            state = "is incomplete" if (root / "manifest.json").exists() else "does not exist"
            logger.warning(f"dtr: hint: the latent cache {root} {state}, so every batch is encoded with the VAE "
                           "(slower); run `dtr cache-latents CONFIG` once to build it")
    return registry.build("dataset", cfg.dataset.name, **cfg.dataset.params)


def cache_latents(cfg: ExperimentConfig, *, registry: PluginRegistry | None = None, progress: bool = True) -> Path:
    """Encode ``cfg``'s dataset with its codec into the latent cache (resumable); returns the cache folder."""
    from dtr_plugins.core import distributed

    registry = registry or default_registry()
    spec = codec_spec(cfg)
    if spec.is_identity or spec.cache is None:
        raise ConfigError("vae.path: dtr cache-latents needs a vae section, e.g. vae: {path: "
                          "stabilityai/sd-vae-ft-ema} (a hub id or a local diffusers folder), or a codec section")
    codec = build_codec(cfg, registry)
    image_size = image_shape(cfg, registry)[1]
    codec.latent_shape(image_shape(cfg, registry))  # geometry errors before any work
    root, key = latent_cache_root(cfg, codec, registry)
    params = data_params(cfg, registry)
    if isinstance(params, SupportsAugmentation):  # the cache holds both views itself
        params = params.unaugmented()
    dataset = registry.build("dataset", cfg.dataset.name, **params.model_dump())
    describe = {"name": spec.name, "params": spec.params, "repr": repr(codec)}
    d = distributed.setup(cfg.train.device)
    finished = False
    try:
        written = write_cache(root, key, dataset, codec, spec.cache, image_size=image_size, dist=d,
                              num_workers=cfg.train.num_workers, progress=progress, describe=describe)
        finished = True
        return written
    finally:
        distributed.teardown(d, clean=finished)


@dataclass
class ModelInput:
    """A data batch -> the denoiser's ``x0``: identity for pixels (the batch itself, no random draw);
    cached posteriors -> :func:`draw_latents`; images with a latent codec -> ``codec.encode``."""

    codec: Codec
    identity: bool
    cached: bool

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return batch
        if self.cached:
            return draw_latents(batch)
        return self.codec.encode(batch)


# ------------------------------------------------------------------------------------ everything
@dataclass
class Components:
    """Everything one run is made of, built from one config, each part once (:func:`compose`).

    ``dataset`` is None when :func:`compose` was told not to open the data (``data=False``)."""

    cfg: ExperimentConfig
    codec: Codec
    model: RoutedBackbone
    diffusion: Any
    loss_weighting: Any
    dataset: Any
    model_input: ModelInput = field(repr=False)
    #: how the training loop draws ``t`` (the ``timesteps`` section's, else the weighting's when it needs one,
    #: else the process's)
    timestep_sampler: TimestepSampler
    #: how the averaged weights follow the trained ones (the ``ema`` section, or its train.* shorthand)
    ema: EmaRule
    #: where ``timestep_sampler`` came from: ``timesteps``, ``loss_weighting`` or ``process``
    timestep_source: str = "process"
    #: text-to-image: caption indices / prompts -> packed text conditions (None: no text section)
    text: TextStage | None = None
    #: the auxiliary loss of the ``regularizer`` section (repa), set by ``dtr train`` (compose/regularize.py)
    regularizer: Regularizer | None = None
    #: the data's held-out split, opened with the data (compose/heldout.py); None with ``heldout_why`` saying why
    heldout_data: Any = None
    heldout_why: str = ""

    def to(self, device: torch.device | str) -> Components:
        """The model, the loss weighting and the regulariser's trainable part moved to ``device`` (in place; returns
        ``self``)."""
        self.model.to(device)
        self.loss_weighting.to(device)
        if self.regularizer is not None:
            self.regularizer.module().to(device)
        return self


def compose(cfg: ExperimentConfig, registry: PluginRegistry | None = None, *, device: torch.device | str = "cpu",
            data: bool = True, text: bool = True) -> Components:
    """The one builder: codec, model with its routing plan, process, loss weighting, timestep sampler, dataset and
    input stage,
    each built once. ``dtr validate``, ``dtr train``, ``dtr sample``, ``dtr masks``, ``dtr export`` and the
    Python API all compose a run here.

    ``device="meta"``: the backbone is built on the meta device (shapes only, no memory, no initialisation
    cost; the loss weighting stays on the CPU), for the checks of :func:`~dtr_plugins.compose.validate.check_run`.
    Otherwise the model and the loss weighting are moved to ``device``; the model's initial weights come from the
    global torch generator (seed it first). ``data=False``: the dataset and its held-out split are not opened
    (``dataset`` is None).
    ``text=False``: a text section is checked against the backbone and data but its conditioner is not built.
    Raises :class:`ConfigError` / :class:`PluginError` (one line) for a composition that cannot work.
    """
    registry = registry or default_registry()
    spec = codec_spec(cfg)
    codec = build_codec(cfg, registry)
    meta = torch.device(device).type == "meta"
    check_composition(cfg, registry)  # the codec fits the backbone, before the process is built
    process = build_diffusion(cfg, registry)
    model = build_model(cfg, registry, codec=codec, process=process, meta=meta)
    weighting = build_loss_weighting(cfg, registry)
    dataset = build_dataset(cfg, registry, codec=codec) if data else None
    model_input = ModelInput(codec, spec.is_identity, isinstance(dataset, LatentCacheDataset))
    rule = build_timestep_rule(cfg, registry)
    sampler, source = choose_sampler(process, weighting, cfg.loss_weighting.name, rule,
                                     cfg.timesteps.name if cfg.timesteps else "")
    if text:
        stage = build_text_stage(cfg, model, registry, captions=data)
    else:
        stage = None
        check_text(cfg, model, registry)
    parts = Components(cfg, codec, model, process, weighting, dataset, model_input, sampler, build_ema(cfg, registry),
                       source, stage)
    if data:
        parts.heldout_data, parts.heldout_why = open_heldout_split(cfg, registry, process, model_input.cached)
    return parts if meta else parts.to(device)


def build_components(cfg: ExperimentConfig, registry: PluginRegistry | None = None, *,
                     device: torch.device | str = "cpu") -> Components:
    """:func:`compose` with the data (kept for the Python API)."""
    return compose(cfg, registry, device=device)
