"""The experiment config: flat YAML, validated by pydantic, every plugin section by its plugin's params.

``load_config(path, overrides)`` is the only way in; every mistake becomes one :class:`ConfigError`
line naming the file, the key path, the bad value and what is allowed.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from dtr_plugins.core.buckets import BUCKETS_HELP, BucketSetting
from dtr_plugins.core.errors import ConfigError, PluginError, UserError
from dtr_plugins.core.overrides import SWITCHABLE_SECTIONS as SWITCHABLE_SECTIONS  # re-exported
from dtr_plugins.core.overrides import apply_overrides as apply_overrides
from dtr_plugins.core.overrides import print_notes
from dtr_plugins.core.overrides import set_dotted as set_dotted
from dtr_plugins.core.plugins import PluginRegistry, default_registry, validate_params
from dtr_plugins.core.routing import check_routing_site, declared_backbone_class
from dtr_plugins.core.seeds import SEED_MAX
from dtr_plugins.core.text import check_inside_path as check_inside_path  # re-exported: it lived here
from dtr_plugins.core.text_config import TextSection, resolve_text
from dtr_plugins.core.tracking import KIND as TRACKER_KIND
from dtr_plugins.core.tracking import check_trackers
from dtr_plugins.core.yaml_reader import YAML_MAX_BYTES as YAML_MAX_BYTES  # re-exported: configs are read here
from dtr_plugins.core.yaml_reader import YamlLimitError as YamlLimitError
from dtr_plugins.core.yaml_reader import parse_yaml as parse_yaml
from dtr_plugins.core.yaml_reader import read_yaml as read_yaml

#: what a path component (run name, run id) may hold: one folder name, never ``.`` or ``..``
PATH_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME = 200  #: characters of a run name or run id (one path component)

#: ``train.device`` values: ``auto`` (cuda:LOCAL_RANK when CUDA is available, else cpu), ``cpu``,
#: ``cuda`` (cuda:LOCAL_RANK), ``cuda:N``, ``mps`` (Apple GPUs)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda|cuda:[0-9]+|mps")
DEVICES_ALLOWED = "auto, cpu, cuda, cuda:N, mps"


def check_path_component(value: Any, key: str) -> str:
    """``value`` if it is one path component (letters, digits, ``._-``; not ``.`` or ``..``), else a one-line
    :class:`ConfigError` naming ``key``. Run names and run ids go through it, so nothing lands outside
    the output folder."""
    if not isinstance(value, str) or not PATH_COMPONENT.fullmatch(value) or value in (".", ".."):
        raise ConfigError(f"{key}: {value!r} is not a valid name (one path component: letters, digits, '.', '_', "
                          f"'-'; not '.' or '..')")
    if len(value) > MAX_NAME:  # a file name has at most 255 bytes, and outputs add suffixes to it
        raise ConfigError(f"{key}: {value[:20]!r}... is {len(value)} characters long; at most {MAX_NAME} allowed")
    return value


class _Strict(BaseModel):
    # nan / inf make no sense in any float of these sections (a lr of .inf trains nothing useful)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PluginSection(BaseModel):
    """``{name: <plugin>, **params}``; the params are checked against the plugin's own model."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ProcessSection(PluginSection):
    """flow: the ``diffusion`` section, a plugin section whose ``name`` defaults to ``gaussian``."""

    name: str = "gaussian"


class RoutingSection(PluginSection):
    """``routing: {name: <strategy>, site: <routing site>, **params}``; ``site`` is not a strategy param."""

    site: str = Field("input", description="where the table acts: a routing site of the backbone "
                      "(input: block inputs, the published DTR; dit: heads, mlp, heads_mlp)")


class EmaSection(PluginSection):
    """``ema: {name: <ema rule>, snapshot_every: N, **params}``; ``snapshot_every`` is not a rule param."""

    snapshot_every: int = Field(0, ge=0, description="save every profile's EMA weights to <run>/ema/ every N steps "
                                "and at the end (0: never); dtr ema reconstructs other power-EMA widths from them")


class DiffusionConfig(_Strict):
    """Parameters of the ``gaussian`` process."""

    steps: int = Field(1000, ge=2, description="training timesteps T (also the number of routing tasks)")
    schedule: Literal["linear", "cosine"] = "linear"
    learn_sigma: bool = True


class TrainConfig(_Strict):
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch, split across ranks")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_warmup_steps: int = Field(0, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    ema_warmup: bool = Field(False, description="decay min(ema_decay, (1+step)/(10+step)): EMA useful on short runs")
    grad_clip: float | None = Field(None, gt=0)
    log_every: int = Field(50, ge=1)
    ckpt_every: int = Field(0, ge=0, description="0: only at the end")
    keep_last: int | None = Field(None, ge=1, description="keep only the newest N checkpoints (default: keep all); "
                                  "may change on --resume")
    num_workers: int = Field(0, ge=0)
    compile: bool = False
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step: each rank runs its share "
                                  "of batch_size (still the images per step) as k equal micro-batches, gradients "
                                  "summed, DDP synced on the last (training/accumulate.py); batch_size must divide "
                                  "by world size x k; may change on --resume")
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in the backward "
                                           "(torch.utils.checkpoint, non-reentrant): less memory, same gradients; "
                                           "dit, latent_dit, adm_unet; may change on --resume")
    tf32: bool = Field(False, description="TF32 matmuls and convolutions on CUDA (Ampere or newer); not applicable "
                       "on CPU/MPS (meta.json records what was applied); may change on --resume")
    device: str = Field("auto", description=DEVICES_ALLOWED)
    init_from: str | None = Field(None, description="fine-tune from this checkpoint file: its EMA (else model) weights "
                                  "start a fresh run (an official DiT/DTR file or one of ours); not read on --resume")
    timestep_buckets: BucketSetting = Field(0, description=BUCKETS_HELP)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"unknown device {value!r} (allowed: {DEVICES_ALLOWED})")
        return value
    threads: int | None = Field(None, ge=1, description="CPU threads of this process (torch.set_num_threads); "
                                "None: torch's default")

    @field_validator("grad_accum_steps")
    @classmethod
    def _divides_batch(cls, value: int, info: ValidationInfo) -> int:
        batch = info.data.get("batch_size")
        if isinstance(batch, int) and batch % value:
            raise ValueError(f"{value} does not divide train.batch_size {batch} (each optimizer step runs "
                             "batch_size / (world size x grad_accum_steps) images per micro-batch)")
        return value


class SampleConfig(_Strict):
    sampler: str = Field("", description="gaussian: ddpm, ddim; flow_matching: euler, heun, euler_maruyama, dopri5; "
                         "unset: the process's default_sampler (gaussian: ddim, flow_matching: euler)")
    respacing: str = Field("", description="gaussian: '250', 'ddim50', ...; flow_matching: the step count; "
                           "unset: the process's default_respacing (gaussian: ddim50, flow_matching: 50)")
    eta: float = Field(0.0, ge=0)
    cfg_scale: float = Field(1.0, ge=0)
    cfg_channels: Literal["all", "first3"] = "all"
    clip_denoised: bool = True
    num_samples: int = Field(64, ge=1, description="images `dtr sample` makes when -n is not given (the "
                             "end-of-training evaluation makes eval.num_samples)")
    batch_size: int = Field(256, ge=1)
    guidance_interval: tuple[float, float] | None = Field(
        None, description="[lo, hi]: classifier-free guidance only at noise levels in [lo, hi] (gaussian: sigma, "
        "flow_matching: t, 0 noise .. 1 data; Kynkaanniemi et al. 2024); unset: at every step")
    time_shift: float = Field(1.0, gt=0, allow_inf_nan=False,
                              description="flow_matching: SD3 shift of the time grid (> 1: more steps at high noise)")
    atol: float = Field(1e-6, gt=0, allow_inf_nan=False, description="absolute tolerance of the dopri5 sampler")
    rtol: float = Field(1e-3, gt=0, allow_inf_nan=False, description="relative tolerance of the dopri5 sampler")

    @field_validator("guidance_interval")
    @classmethod
    def _interval(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        from dtr_plugins.core.sampling_settings import interval_problem

        problem = None if value is None else interval_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("respacing", mode="before")
    @classmethod
    def _count_as_text(cls, value: Any) -> Any:
        """``respacing: 250`` (a YAML integer) means the string ``"250"``."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class EvalConfig(_Strict):
    metrics: list[str] = Field(default_factory=lambda: ["fid"],
                               description="metric names of the registry (dtr_plugins.core.metrics)")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from dtr_plugins.core.metrics import selectable

        allowed = selectable()
        unknown = [m for m in value if m not in allowed]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r} (allowed: {', '.join(allowed)})")
        return value
    feature_extractor: str = "inception-v3-compat"
    feature_extractor_params: dict[str, Any] = Field(
        default_factory=dict, description="parameters of the feature extractor plugin, checked against its params "
        "model (e.g. fashion-classifier's data_path: where its training and test IDX files are)")
    weights_path: str | None = None
    reference: str | None = Field(None, description="dataset:NAME, a folder or an .npz; default: the training data")
    every: int = Field(0, ge=0, description="evaluate during training every N steps (0: only at the end)")
    num_samples: int = Field(1000, ge=1)
    at_end: bool = True
    heldout_every: int = Field(200, ge=0, description="held-out denoising loss per noise band (EMA weights) every "
                               "N steps and at the end (0: off); see evaluation/heldout.py")
    heldout_per_band: int = Field(64, ge=1, description="held-out images (and fixed t, noise) per noise band")
    heldout_seed: int = Field(0, ge=0, le=SEED_MAX,
                              description="seed of the held-out inputs (not the run's seed: every run of a suite is "
                                          "scored on the same inputs)")

    @model_validator(mode="after")
    def _metrics_when_evaluating(self) -> EvalConfig:
        """An evaluation (``at_end`` or ``every``) needs a metric: found here, not at the end of training."""
        if not self.metrics and (self.at_end or self.every):
            raise ValueError("no metrics, but an evaluation is asked for (eval.at_end or eval.every); name "
                             "eval.metrics or set eval.at_end: false and eval.every: 0")
        return self


class CacheFields(BaseModel):
    """Where a codec's latent cache (``dtr cache-latents``) is stored."""

    cache_dir: str | None = Field(None, description="root of latent caches; default <output_dir>/latent_cache")
    shard_size: int = Field(4096, ge=1, description="images per latent cache shard file")
    cache_dtype: Literal["float32", "float16"] = Field("float32", description="storage type of cached posteriors")
    cache_batch_size: int = Field(32, ge=1, description="images per encode call while writing the latent cache")


class CodecSection(PluginSection, CacheFields):
    """``{name: <codec plugin>, **params}`` plus the latent cache fields (not passed to the codec)."""


class VaeConfig(_Strict):
    """Shorthand for the ``autoencoder_kl`` codec of a latent backbone (``latent_dit``) and its latent
    cache; ``vae: {path: X}`` is ``codec: {name: autoencoder_kl, path: X}``."""

    path: str = Field(description="hub id (stabilityai/sd-vae-ft-ema) or a local diffusers AutoencoderKL folder")
    scale_factor: float | None = Field(None, gt=0, description="latent scale; default: the VAE config's "
                                       "scaling_factor, else 0.18215")
    cache_dir: str | None = Field(None, description="root of latent caches; default <output_dir>/latent_cache")
    batch_size: int = Field(32, ge=1, description="images per VAE encode / decode call (bounds memory)")
    shard_size: int = Field(4096, ge=1, description="images per latent cache shard file")
    cache_dtype: Literal["float32", "float16"] = Field("float32", description="storage type of cached posteriors")


class LogConfig(_Strict):
    """Experiment trackers that mirror ``metrics.jsonl`` (which stays the source of truth)."""

    trackers: list[PluginSection] = Field(
        default_factory=list, description="tracker names (tensorboard, wandb, mlflow) or {name: wandb, project: ...}")
    suite: str | None = Field(None, description="the suite this run belongs to (`dtr suite` sets it to the suite's "
                              "name); trackers group by it: W&B group, MLflow experiment")

    @field_validator("trackers", mode="before")
    @classmethod
    def _names_to_sections(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value


class ExperimentConfig(_Strict):
    name: str = Field(min_length=1)
    seed: int = Field(0, ge=0, le=SEED_MAX, description="the run's seed (0 to 2**63 - 1, what torch.manual_seed takes)")
    output_dir: str = "runs"
    backbone: PluginSection
    routing: RoutingSection = Field(default_factory=lambda: RoutingSection(name="vanilla"))
    diffusion: ProcessSection = Field(default_factory=ProcessSection)
    loss_weighting: PluginSection = Field(default_factory=lambda: PluginSection(name="constant"))
    data: PluginSection | None = Field(None, description="the training data; a model-only config (a loaded "
                                       "model: backbone, routing, diffusion, codec, sample) has none")
    vae: VaeConfig | None = None
    codec: CodecSection | None = Field(None, description="the image <-> denoiser-space codec; default identity "
                                       "(pixels), or autoencoder_kl when a vae section is given")
    train: TrainConfig = Field(default_factory=TrainConfig)
    ema: EmaSection | None = Field(None, description="the EMA rule (constant, warmup, power); unset: the shorthand "
                                   "train.ema_decay / train.ema_warmup (constant or warmup)")
    timesteps: PluginSection | None = Field(None, description="how training draws t (uniform, logit_normal, "
                                            "cluster_balanced); unset: the loss weighting's or the process's own")
    token_routing: PluginSection | None = Field(None, description="tokens that skip a span of blocks in training "
                                                "(tread); unset: every token runs every block")
    regularizer: PluginSection | None = Field(None, description="an auxiliary loss from a frozen encoder (repa); "
                                              "unset: none (docs/regularizers.md)")
    sample: SampleConfig = Field(default_factory=SampleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)  # helper "trackers"
    text: TextSection | None = Field(None, description="text-to-image: the conditioner (docs/text_to_image.md)")
    #: (diffusion section as validated, the process built from it): validation builds the process once to ask it
    #: for its defaults and checks; composition reuses it while the section is unchanged (one build per command)
    _validated_process: tuple[dict[str, Any], Any] | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:  # the fields; the process held since validation is not part of it
        if not isinstance(other, ExperimentConfig):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # mutable, like every pydantic model

    def validated_process(self) -> Any:
        """The process built while this config was validated, when its ``diffusion`` section is still the one it
        was built from; else None (then :func:`dtr_plugins.compose.build_diffusion` builds it)."""
        held = self._validated_process
        if held is None or held[0] != self.diffusion.model_dump(mode="json"):
            return None
        return held[1]

    @field_validator("name")
    @classmethod
    def _one_component(cls, value: str) -> str:
        try:
            return check_path_component(value, "name")
        except ConfigError as exc:
            raise ValueError(str(exc).partition(": ")[2]) from None

    @property
    def dataset(self) -> PluginSection:
        """The ``data`` section; a ConfigError for a model-only config (training and evaluating need data)."""
        if self.data is None:
            raise ConfigError("data: missing section; training and evaluation need the training data, e.g. "
                              "data: {name: digits} (only a loaded model's config goes without one)")
        return self.data

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values; unset optional sections (``data``, ``ema``, ``timesteps``, ``text``,
        ``token_routing``, ``regularizer``), an unset ``train.init_from`` and empty ``eval.feature_extractor_params``
        are absent, not null, so configs written before them keep their fingerprint (a model-only config has no
        ``data``)."""
        out = self.model_dump(mode="json")
        for optional in ("data", "ema", "timesteps", "text", "token_routing", "regularizer"):
            if out.get(optional) is None:
                out.pop(optional, None)
        if out["train"].get("init_from") is None:
            out["train"].pop("init_from", None)
        if not out["eval"].get("feature_extractor_params"):
            out["eval"].pop("feature_extractor_params", None)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: strategies that route nothing: a ``routing.site`` other than the default would be recorded as a routed site
UNROUTED_STRATEGIES = ("vanilla",)

#: config section -> plugin kind
PLUGIN_SECTIONS = {"diffusion": "process",  # flow: first, so the backbone can follow its learn_sigma
                   "backbone": "backbone", "routing": "strategy", "loss_weighting": "loss_weighting",
                   "data": "dataset", "ema": "ema", "timesteps": "timestep_sampler",
                   "token_routing": "token_router", "regularizer": "regularizer"}

#: the sections that together make the strategy a suite compares with ``vanilla``: the first names it
#: (``dtr-a4-b0.8``), each further one joins it as ``+label`` when a suite varies it (``dtr-a4-b0.8+tread``;
#: ``vanilla+tread`` is token routing alone). Every other varied section is a setting both sides of a pair share.
STRATEGY_SECTIONS = ("routing", "token_routing")



def load_config(path: str | Path, overrides: Sequence[str] = (),
                registry: PluginRegistry | None = None) -> ExperimentConfig:
    """Read, override and validate a run config; raises :class:`ConfigError` with one line per mistake."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    if suite_keys := sorted({"matrix", "base"} & data.keys()):  # a suite file's (experiments/suite.py), no run's
        raise ConfigError(f"{path}: is a suite file (it has {' / '.join(suite_keys)}), not a "
                          f"run config; run it with `dtr suite {path}`")
    notes: list[str] = []
    data = apply_overrides(data, overrides, notes=notes)
    cfg = config_from_dict(data, source=str(path), registry=registry)
    print_notes(notes)  # only for a config that is valid
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "<config>",
                     registry: PluginRegistry | None = None) -> ExperimentConfig:
    """Validate a config mapping (already loaded); ``source`` names it in error messages."""
    try:
        cfg = validate_params(ExperimentConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return resolve_plugins(cfg, registry or default_registry())
    except UserError as exc:
        raise type(exc)(f"{source}: {exc}") from None


def resolve_plugins(cfg: ExperimentConfig, registry: PluginRegistry) -> ExperimentConfig:
    """Check every plugin section against its plugin and fill in the plugin's defaults."""
    updates: dict[str, Any] = {}
    process: Any = None  # built from the diffusion section, the first of PLUGIN_SECTIONS
    for section, kind in PLUGIN_SECTIONS.items():
        current: PluginSection | None = getattr(cfg, section)
        if current is None:  # data of a model-only config
            continue
        info = registry.get(kind, current.name) if current.name in registry.names(kind) else None
        if info is None:
            known = ", ".join(registry.names(kind)) or "none installed"
            raise ConfigError(f"{section}.name: unknown {kind} {current.name!r} (known: {known})")
        params = current.params
        if section == "backbone":
            _follow_process(params, info, process, cfg.diffusion.name, updates["diffusion"].params)
        fixed = current.model_dump(exclude=set(params))  # name, and routing.site
        validated = info.validate(params, where=section, section_keys=[k for k in fixed if k != "name"])
        updates[section] = type(current)(**fixed, **validated.model_dump(mode="json"))
        if section == "diffusion":
            process = _build_process(info, validated)
    if cfg.ema is not None and (cfg.train.ema_decay != TrainConfig().ema_decay or cfg.train.ema_warmup):
        default = TrainConfig().ema_decay
        raise ConfigError(f"ema: give either an ema section or its shorthand train.ema_decay / train.ema_warmup, "
                          f"not both (e.g. ema: {{name: warmup, decay: 0.999}}; to switch a config that uses the "
                          f"shorthand: --set train.ema_decay={default} --set train.ema_warmup=false)")
    if cfg.codec is not None:
        if cfg.vae is not None:
            raise ConfigError("codec: give either a vae section (the autoencoder_kl shorthand) or a codec section, "
                              "not both")
        if cfg.codec.name not in registry.names("codec"):
            known = ", ".join(registry.names("codec")) or "none installed"
            raise ConfigError(f"codec.name: unknown codec {cfg.codec.name!r} (known: {known})")
        validated = registry.get("codec", cfg.codec.name).validate(cfg.codec.params, where="codec")
        cache = {k: getattr(cfg.codec, k) for k in CacheFields.model_fields}
        updates["codec"] = CodecSection(name=cfg.codec.name, **cache, **validated.model_dump(mode="json"))
    # flow: the process rules out loss weightings and sample settings that do not apply to it
    from dtr_plugins.core.process import check_process_settings

    sample = cfg.sample.model_copy(update={  # defaults that depend on the process come from the process
        "sampler": cfg.sample.sampler or process.default_sampler,
        "respacing": cfg.sample.respacing or str(process.default_respacing)})
    updates["sample"] = sample
    from dtr_plugins.core.sampling_settings import SolverSettings

    solver = SolverSettings(sample.sampler, sample.respacing, sample.eta, sample.cfg_scale, sample.cfg_channels,
                            sample.clip_denoised, sample.guidance_interval, sample.time_shift, sample.atol,
                            sample.rtol)
    check_process_settings(process, cfg.diffusion.name, loss_weighting=cfg.loss_weighting.name,
                           sampler=sample.sampler, respacing=sample.respacing, eta=cfg.sample.eta, solver=solver)
    updates["log"] = _resolve_trackers(cfg.log, registry)
    updates["text"] = None if cfg.text is None else resolve_text(cfg.text, registry)
    backbone = declared_backbone_class(registry.get("backbone", cfg.backbone.name).factory)
    if backbone is not None:
        check_routing_site(backbone, cfg.routing.site, cfg.backbone.name)
    if cfg.routing.name in UNROUTED_STRATEGIES and cfg.routing.site != "input":
        raise ConfigError(f"routing.site: {cfg.routing.site!r} given with routing {cfg.routing.name!r}, which routes "
                          f"nothing (the plain model); remove routing.site, or choose a routing strategy")
    out = cfg.model_copy(update=updates)
    out._validated_process = (out.diffusion.model_dump(mode="json"), process)
    return out


def _build_process(info: Any, validated: BaseModel) -> Any:
    """The process of the diffusion section, built from its validated params (cheap: no weights), checked
    against :class:`~dtr_plugins.core.contracts.DiffusionProcess` (a PluginError naming what it lacks)."""
    from dtr_plugins.core.contracts import DiffusionProcess, missing_members

    process = info.build(**validated.model_dump())
    missing = missing_members(process, DiffusionProcess)
    if missing:
        raise PluginError(f"process '{info.name}' ({info.plugin}) does not satisfy the DiffusionProcess contract: "
                          f"missing {', '.join(missing)} (see dtr_plugins/core/contracts.py)")
    return process


def _follow_process(params: dict[str, Any], info: Any, process: Any, process_name: str,
                    process_params: dict[str, Any]) -> None:
    """The backbone's :data:`~dtr_plugins.core.contracts.VARIANCE_PARAM` follows the process's ``learn_sigma``
    (set in ``params``); a ConfigError when the backbone's params disagree or it cannot predict a variance."""
    from dtr_plugins.core.contracts import VARIANCE_PARAM as KEY

    learn_sigma = bool(process.learn_sigma)
    if KEY not in info.params.model_fields:
        if learn_sigma:
            raise ConfigError(f"backbone.name: backbone {info.name!r} cannot predict a variance (its params have no "
                              f"{KEY}) but diffusion {process_name!r} learns sigma; set diffusion.{KEY}: false")
        return
    if params.setdefault(KEY, learn_sigma) != learn_sigma:
        hint = (f"set only diffusion.{KEY}" if KEY in process_params
                else f"diffusion {process_name!r} fixes it; remove backbone.{KEY}")
        raise ConfigError(f"backbone.{KEY}: {params[KEY]!r} disagrees with diffusion.{KEY} {learn_sigma!r}; {hint}")


def _resolve_trackers(log: LogConfig, registry: PluginRegistry) -> LogConfig:
    """Each ``log.trackers`` entry: a known tracker, its package installed, its params filled in."""
    check_trackers([t.name for t in log.trackers], registry)
    resolved = [PluginSection(name=t.name, **registry.get(TRACKER_KIND, t.name)
                              .validate(t.params, where=f"log.trackers.{i}").model_dump(mode="json"))
                for i, t in enumerate(log.trackers)]
    return log.model_copy(update={"trackers": resolved})
