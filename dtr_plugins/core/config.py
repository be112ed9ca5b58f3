"""The experiment config: flat YAML, validated by pydantic, every plugin section by its plugin's params.

``load_config(path, overrides)`` is the only way in; every mistake becomes one :class:`ConfigError`
line naming the file, the key path, the bad value and what is allowed.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, UserError
from .plugins import PluginRegistry, default_registry, format_validation_error
from .tracking import KIND as TRACKER_KIND, check_trackers  # helper "trackers"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    num_workers: int = Field(0, ge=0)
    compile: bool = False
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")


class SampleConfig(_Strict):
    sampler: str = Field("ddim", description="gaussian: ddpm, ddim; flow_matching: euler, heun, euler_maruyama")
    respacing: str = Field("ddim50", description="gaussian: '250', 'ddim50', ...; flow_matching: the step count")
    eta: float = Field(0.0, ge=0)
    cfg_scale: float = Field(1.0, ge=0)
    cfg_channels: Literal["all", "first3"] = "all"
    clip_denoised: bool = True
    num_samples: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=1)


class EvalConfig(_Strict):
    metrics: list[Literal["fid", "isc", "kid", "prc"]] = Field(default_factory=lambda: ["fid"])
    feature_extractor: str = "inception-v3-compat"
    weights_path: str | None = None
    reference: str | None = Field(None, description="dataset:NAME, a folder or an .npz; default: the training data")
    every: int = Field(0, ge=0, description="evaluate during training every N steps (0: only at the end)")
    num_samples: int = Field(1000, ge=1)
    at_end: bool = True
    heldout_every: int = Field(200, ge=0, description="held-out denoising loss per noise band (EMA weights) every "
                               "N steps and at the end (0: off); see engine/heldout.py")
    heldout_per_band: int = Field(64, ge=1, description="held-out images (and fixed t, noise) per noise band")
    heldout_seed: int = Field(0, ge=0, description="seed of the held-out inputs (not the run's seed: every run "
                              "of a suite is scored on the same inputs)")


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


# --- log section (helper "trackers") -----------------------------------------------------------------
class LogConfig(_Strict):
    """Experiment trackers that mirror ``metrics.jsonl`` (which stays the source of truth)."""

    trackers: list[PluginSection] = Field(
        default_factory=list, description="tracker names (tensorboard, wandb, mlflow) or {name: wandb, project: ...}")

    @field_validator("trackers", mode="before")
    @classmethod
    def _names_to_sections(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value
# --- end log section ---------------------------------------------------------------------------------


class ExperimentConfig(_Strict):
    name: str = Field(min_length=1)
    seed: int = 0
    output_dir: str = "runs"
    backbone: PluginSection
    routing: PluginSection = Field(default_factory=lambda: PluginSection(name="vanilla"))
    diffusion: ProcessSection = Field(default_factory=ProcessSection)
    loss_weighting: PluginSection = Field(default_factory=lambda: PluginSection(name="constant"))
    data: PluginSection
    vae: VaeConfig | None = None
    codec: CodecSection | None = Field(None, description="the image <-> denoiser-space codec; default identity "
                                       "(pixels), or autoencoder_kl when a vae section is given")
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)  # helper "trackers"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: config section -> plugin kind
PLUGIN_SECTIONS = {"diffusion": "process",  # flow: first, so the backbone can follow its learn_sigma
                   "backbone": "backbone", "routing": "strategy", "loss_weighting": "loss_weighting",
                   "data": "dataset"}


def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` a file; a missing file or malformed YAML is one line naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: malformed YAML: {problem}") from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``a.b=c`` overrides; values are parsed as YAML (``1e-4``, ``true``, ``[1, 2]``, ``{name: dtr}``)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: override '{item}' is not of the form key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{source}: override '{item}': value is not valid YAML") from None
        set_dotted(data, key.strip(), value, source=source)
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set ``data[a][b] = value`` for ``key = "a.b"``, creating sections as needed."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[:i + 1])} is not a section, cannot set {key}")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: Sequence[str] = (), registry: PluginRegistry | None = None) -> ExperimentConfig:
    """Read, override and validate a run config; raises :class:`ConfigError` with one line per mistake."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    return config_from_dict(data, source=str(path), registry=registry)


def config_from_dict(data: dict[str, Any], source: str = "<config>",
                     registry: PluginRegistry | None = None) -> ExperimentConfig:
    """Validate a config mapping (already loaded); ``source`` names it in error messages."""
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc, ExperimentConfig)}") from None
    try:
        return resolve_plugins(cfg, registry or default_registry())
    except UserError as exc:
        raise type(exc)(f"{source}: {exc}") from None


def resolve_plugins(cfg: ExperimentConfig, registry: PluginRegistry) -> ExperimentConfig:
    """Check every plugin section against its plugin and fill in the plugin's defaults."""
    updates: dict[str, PluginSection] = {}
    for section, kind in PLUGIN_SECTIONS.items():
        current: PluginSection = getattr(cfg, section)
        info = registry.get(kind, current.name) if current.name in registry.names(kind) else None
        if info is None:
            known = ", ".join(registry.names(kind)) or "none installed"
            raise ConfigError(f"{section}.name: unknown {kind} {current.name!r} (known: {known})")
        params = current.params
        if section == "backbone" and "learn_sigma" in info.params.model_fields:
            # flow: the process decides (gaussian: its learn_sigma param; flow_matching: always False)
            learn_sigma = updates["diffusion"].params.get("learn_sigma", process_cls.learn_sigma)
            if params.setdefault("learn_sigma", learn_sigma) != learn_sigma:
                hint = ("set only diffusion.learn_sigma" if "learn_sigma" in updates["diffusion"].params
                        else f"diffusion {cfg.diffusion.name!r} fixes it; remove backbone.learn_sigma")
                raise ConfigError(f"backbone.learn_sigma: {params['learn_sigma']!r} disagrees with "
                                  f"diffusion.learn_sigma {learn_sigma!r}; {hint}")
        validated = info.validate(params, where=section)
        section_cls = ProcessSection if section == "diffusion" else PluginSection
        updates[section] = section_cls(name=current.name, **validated.model_dump(mode="json"))
        if section == "diffusion":
            process_cls = info.factory
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
    from .process import check_process_settings

    check_process_settings(process_cls, cfg.diffusion.name, loss_weighting=cfg.loss_weighting.name,
                           sampler=cfg.sample.sampler, respacing=cfg.sample.respacing)
    updates["log"] = _resolve_trackers(cfg.log, registry)
    return cfg.model_copy(update=updates)


def _resolve_trackers(log: LogConfig, registry: PluginRegistry) -> LogConfig:
    """Each ``log.trackers`` entry: a known tracker, its package installed, its params filled in."""
    check_trackers([t.name for t in log.trackers], registry)
    resolved = [PluginSection(name=t.name, **registry.get(TRACKER_KIND, t.name).validate(t.params, where=f"log.trackers.{i}")
                              .model_dump(mode="json")) for i, t in enumerate(log.trackers)]
    return log.model_copy(update={"trackers": resolved})
