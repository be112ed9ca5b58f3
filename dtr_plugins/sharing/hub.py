"""Share and reuse models: export a run in hub layout, load exported / diffusers folders and hub ids, push.

Layouts :func:`from_pretrained` reads (detected from the folder's files):

- **this project's export** (:func:`export_run`): ``model.safetensors`` (official DiT / guided-diffusion
  key layout), ``config.json`` (the resolved run config, routing and codec/vae sections included, plus
  an ``_dtr_export`` record: format, weights, step, checkpoint, weights SHA-256, codec) and ``README.md``
  (the model card). A latent model's VAE is not in the folder: ``vae.path`` must resolve where it loads;
- **a diffusers ``DiTTransformer2DModel`` folder** (``config.json`` with ``_class_name:
  DiTTransformer2DModel`` and ``diffusion_pytorch_model.safetensors``), loaded exactly into
  the backbone whose state-dict adapter reads it (``dit_diffusers``). This module imports no backbone: it
  finds them through the :class:`~dtr_plugins.core.contracts.StateDictAdapter` their plugins declare;
- **a diffusers DiT pipeline folder** (``model_index.json``, ``transformer/``, ``vae/``, ``scheduler/``):
  the transformer on the latents of the pipeline's VAE (``latent_dit_diffusers``), with the training
  timesteps and schedule of ``scheduler/scheduler_config.json``. Loading gives the codec as well.
A source is a local folder, or a Hugging Face hub id (``hf://ORG/NAME[@REVISION]``, or ``ORG/NAME``
when no such local folder exists) resolved through ``huggingface_hub``'s cache: the cache first, the
network only when ``HF_HUB_OFFLINE`` is not set; absent and offline is one line saying how to fetch the
folder elsewhere and point at it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from dtr_plugins.core.errors import CheckpointError, UserError, first_line
from dtr_plugins.core.io import clean_dead_partials, file_sha256
from dtr_plugins.sharing.safetensors_io import check_config_fits_weights, save_reproducible

if TYPE_CHECKING:
    from dtr_plugins.core.config import ExperimentConfig
    from dtr_plugins.core.contracts import Codec, StateDictAdapter
    from dtr_plugins.core.routing import RoutedBackbone

EXPORT_FORMAT, EXPORT_KEY, HUB_PREFIX = "dtr-plugins-export/1", "_dtr_export", "hf://"
WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "config.json", "README.md"
#: what a hub snapshot needs (exports, diffusers transformer folders and DiT pipelines); nothing else is fetched
HUB_PATTERNS = ["config.json", WEIGHTS_FILE, CARD_FILE, "diffusion_pytorch_model.safetensors", "model_index.json",
                "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


#################################################################################
#                                   Export                                      #
#################################################################################

def export_run(source: str | Path, out: str | Path, *, weights: str = "ema", layout: str = "dtr",
               allow_unsafe_load: bool = False) -> Path:
    """Export a run directory (its newest checkpoint) or one checkpoint file to the folder ``out``.

    ``weights``: ``ema`` or ``model``. ``layout``: ``dtr`` (``model.safetensors`` + ``config.json`` +
    ``README.md``) or ``diffusers`` (a ``DiTTransformer2DModel`` folder; vanilla DiT only). ``out`` must
    not exist or be empty; the folder is written beside it and renamed into place, so it is complete or
    absent. Returns ``out``. Raises :class:`UserError` / :class:`CheckpointError` (one line).
    """
    if layout not in ("dtr", "diffusers"):
        raise UserError(f"--format: {layout!r} is not allowed (allowed: dtr, diffusers)")
    out = Path(out)
    found = run_weights(source, weights=weights, allow_unsafe_load=allow_unsafe_load, out=out)
    return write_export(found, out, layout=layout)


class RunWeights(NamedTuple):
    """One set of weights to export, with what its folder records: the model (weights loaded), its config,
    the export record (``weights``, ``step``, ``checkpoint``, ``codec``), ``eval.json`` and ``meta.json``."""

    model: Any
    cfg: ExperimentConfig
    record: dict[str, Any]
    evaluation: dict[str, Any] | None
    meta: dict[str, Any] | None


def run_weights(source: str | Path, *, weights: str = "ema", allow_unsafe_load: bool = False,
                out: Path | None = None) -> RunWeights:
    """The ``weights`` (``ema``/``model``) of a run directory's newest checkpoint, or of one checkpoint file,
    in a model built from the config the checkpoint holds. ``out`` (checked before any checkpoint is read):
    the folder an export will write. Raises :class:`UserError` / :class:`CheckpointError` (one line)."""
    from dtr_plugins.compose import codec_spec, compose
    from dtr_plugins.core.checkpoint import apply_checkpoint, read_checkpoint
    from dtr_plugins.core.param_count import parameter_record
    from dtr_plugins.runs.rundir import RunDir

    if weights not in ("ema", "model"):
        raise UserError(f"--weights: {weights!r} is not allowed (allowed: ema, model)")
    run, ckpt_path = RunDir.locate(source)
    if out is not None:
        _check_out(out)
    ckpt = read_checkpoint(ckpt_path, allow_unsafe=allow_unsafe_load)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(weights), dict):
        have = ", ".join(k for k in ("ema", "model") if isinstance(ckpt, dict) and isinstance(ckpt.get(k), dict))
        raise CheckpointError(f"{ckpt_path}: no '{weights}' weights in this checkpoint (has: {have or 'neither'}); "
                              f"--weights {'model' if weights == 'ema' else 'ema'} exports the other set")
    cfg = run.config_of(ckpt, ckpt_path)
    model = compose(cfg, data=False).model
    apply_checkpoint(model, {weights: ckpt[weights]}, ckpt_path, use_ema=weights == "ema")
    step = ckpt.get("step")
    record: dict[str, Any] = {"format": EXPORT_FORMAT, "weights": weights, "step": None if step is None else int(step),
              "checkpoint": ckpt_path.name, **parameter_record(model)}  # parameters (total, active), time experts
    spec = codec_spec(cfg)
    if not spec.is_identity:  # the codec's config section is in config.json; its weights are not in the folder
        record["codec"] = {"name": spec.name, "section": spec.section, "params": spec.params, "in_folder": False}
    return RunWeights(model.eval(), cfg, record, run.read_eval() or None, run.read_meta() or None)


def write_export(found: RunWeights, out: str | Path, *, layout: str = "dtr", card: str | None = None) -> Path:
    """Write ``found`` to the new (or empty) folder ``out`` in ``layout`` (``dtr`` or ``diffusers``); complete
    or absent. ``card``: the ``README.md`` to write instead of a rendered one (``dtr`` layout), used only
    when the weights written are byte for byte those it describes (``record["weights_sha256"]``)."""
    out = Path(out)
    _check_out(out)
    state = {k: v.detach().cpu().contiguous() for k, v in found.model.state_dict().items()}
    record = {k: v for k, v in found.record.items() if k not in ("weights_file", "weights_sha256", "conversion")}
    record["layout"] = layout
    with _staging(out) as stage:
        if layout == "dtr":
            config = found.cfg.to_dict()
            if (tokens := config.pop("token_routing", None)) is not None:  # training only: the model runs every token
                record["trained_with_token_routing"] = tokens
            sha = _write_dtr(stage, state, config, record, found.evaluation, found.meta)
            if card is not None and sha == found.record.get("weights_sha256"):
                (stage / CARD_FILE).write_text(card)
        else:
            _write_diffusers(stage, found.model, found.cfg, state, record, found.evaluation, found.meta)
    return out


def _write_dtr(stage: Path, state, cfg: dict[str, Any], record: dict[str, Any], evaluation, meta) -> str:
    from dtr_plugins.sharing.model_card import render_model_card

    sha = _save_safetensors(state, stage / WEIGHTS_FILE, record)
    record = {**record, "weights_file": WEIGHTS_FILE, "weights_sha256": sha}
    (stage / CONFIG_FILE).write_text(json.dumps({**cfg, EXPORT_KEY: record}, indent=2) + "\n")
    (stage / CARD_FILE).write_text(render_model_card(cfg, record, evaluation, meta))
    return sha


def _write_diffusers(stage: Path, model, cfg, state, record: dict[str, Any], evaluation, meta) -> None:
    from dtr_plugins.sharing.model_card import render_model_card

    adapter = _adapter_for(cfg.backbone.name, "diffusers")
    if model.plan is not None and not model.plan.is_dense:
        raise UserError(f"--format diffusers: this model is routed (routing: {cfg.routing.name}); diffusers' "
                        "DiTTransformer2DModel has no routing, so a routed model exports to the project's own layout "
                        "only (--format dtr)")
    dstate, dconfig, notes = adapter.to_foreign_state_dict(model, state, num_timesteps=cfg.diffusion.steps)
    sha = _save_safetensors(dstate, stage / adapter.weights_file, record)
    record = {**record, "weights_file": adapter.weights_file, "weights_sha256": sha, "conversion": notes}
    (stage / CONFIG_FILE).write_text(json.dumps(dconfig, indent=2) + "\n")
    time_note = notes["time_embedding"]
    if isinstance(time_note, dict):
        n = time_note
        time_note = (f"refitted for diffusers' timestep frequencies over t = 0..{n['timesteps'] - 1}: the first "
                     f"time-MLP layer's output deviates by rms {n['rms']:.3g} (max {n['max_abs']:.3g}; reference rms "
                     f"{n['rms_ref']:.3g}; copying the weights unchanged would give rms {n['copy_rms']:.3g}), so "
                     "diffusers' outputs are close to, not equal to, this project's")
    note = ("**Layout:** diffusers `DiTTransformer2DModel` (`config.json`, `diffusion_pytorch_model.safetensors`). "
            f"Time embedding: {time_note}. "
            + ("The label table has an extra all-zero null-class row (diffusers always has one). "
               if notes["null_row_added"] else "")
            + "Load with `DiTTransformer2DModel.from_pretrained(DIR)` or `dp.from_pretrained(DIR)`.")
    (stage / CARD_FILE).write_text(render_model_card(cfg.to_dict(), record, evaluation, meta, layout_note=note))


def _save_safetensors(state: Mapping[str, Any], path: Path, record: Mapping[str, Any]) -> str:
    metadata = {"format": "pt", "dtr_export": EXPORT_FORMAT, "weights": str(record["weights"]),
                "step": str(record["step"])}
    save_reproducible(state, path, metadata)  # same checkpoint, same bytes, same sha256
    return file_sha256(path)


def _check_out(out: Path) -> None:
    if out.name in ("", ".", ".."):
        raise UserError(f"--out {out}: name a new folder (not '.' or '..')")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file; choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out: {out} already exists and is not an empty folder; choose a new folder")


class _staging:
    """A hidden folder ``.<out>.partial-<pid>`` beside ``out``; renamed onto ``out`` on success, removed on
    error; those of dead processes are removed first."""
    def __init__(self, out: Path):
        self.out = out

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        clean_dead_partials(self.out)  # what an export killed before it could clean up left beside ``out``
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.chmod(self.tmp, 0o777 & ~_umask())
        if self.out.is_dir():
            self.out.rmdir()  # empty (checked before)
        os.replace(self.tmp, self.out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask





#################################################################################
#                                  Loading                                      #
#################################################################################

class Pretrained(NamedTuple):
    """What :func:`from_pretrained` gives: ``model, cfg, codec = dp.from_pretrained(...)``."""

    model: RoutedBackbone  # the backbone in eval mode, routing plan attached: ``model(x, t, y)``
    cfg: ExperimentConfig  # the resolved config it was built from
    codec: Codec  # backbone space <-> images: ``codec.decode(x)`` (identity for pixel models)


def from_pretrained(source: str | Path, *, device: Any = None) -> Pretrained:
    """Load an exported model, a diffusers DiT folder or pipeline, or a hub id: ``(model, cfg, codec)``.

    ``model`` in eval mode on ``device`` (default CPU); ``cfg`` (for a diffusers folder synthesised from its
    configs: vanilla routing, default sampling); ``codec`` from ``compose.build_codec(cfg)``: identity for
    pixels, a latent model's VAE from ``vae.path`` (not part of an export), a pipeline's ``vae/``; pass it to
    ``generate(..., codec=codec)``. Raises :class:`CheckpointError` (one line) for what cannot be loaded.
    """
    cfg, parts, _ = _load(resolve(source))
    model = parts.model
    return Pretrained((model.to(device) if device is not None else model).eval(), cfg, parts.codec)


def load_for_sampling(source: str | Path, *, device: Any = None):
    """``(cfg, model, diffusion, codec, weights_path, info)`` for ``dtr sample``; ``info``: ``weights``
    (``ema``, ``model`` or ``diffusers``), ``step`` and ``source`` (the canonical source, e.g. ``hf://ORG/NAME``)."""
    folder = resolve(source)
    cfg, parts, info = _load(folder)
    info["source"] = str(source) if str(source).startswith(HUB_PREFIX) else str(folder)
    model = parts.model if device is None else parts.model.to(device)
    return cfg, model.eval(), parts.diffusion, parts.codec, Path(info.pop("weights_path")), info


def is_pretrained_source(source: str | Path) -> bool:
    """True for ``hf://...`` and for a local export / diffusers folder (not a run directory or .pt file)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return True
    folder = Path(text)
    return folder.is_dir() and not (folder / "checkpoints").is_dir() and \
        ((folder / CONFIG_FILE).is_file() or (folder / "model_index.json").is_file())


def _load(folder: Path):
    """``(cfg, parts, info)`` from a resolved local folder, by layout (``parts``: :func:`compose`'s, weights loaded)."""
    if (folder / "model_index.json").is_file() and (folder / "transformer" / CONFIG_FILE).is_file():
        return _load_foreign(folder / "transformer", pipeline=folder)
    config = _read_config(folder)
    if EXPORT_KEY in config:
        return _load_export(folder, config)
    if _adapter_reading(config, "pixels") is not None:
        return _load_foreign(folder, pipeline=None)
    raise CheckpointError(f"{folder / CONFIG_FILE}: neither an exported dtr-plugins model (no '{EXPORT_KEY}' "
                          "record) nor a model that an installed backbone reads (e.g. a diffusers "
                          "DiTTransformer2DModel, _class_name); export one with dtr export RUN --out DIR")


#: ``dtr export --format`` values besides ``dtr`` (each a ``layout`` of some backbone's state-dict adapter)
FOREIGN_LAYOUTS = ("diffusers",)


def _adapter_for(backbone: str, layout: str) -> StateDictAdapter:
    """The state-dict adapter the plugin of ``backbone`` declares for ``layout``; UserError when none does."""
    from dtr_plugins.core.plugins import default_registry

    registry = default_registry()
    adapter = registry.build("state_dict_adapter", backbone) \
        if backbone in registry.names("state_dict_adapter") else None
    if adapter is None or adapter.layout != layout:
        able = [n for n in registry.names("state_dict_adapter")
                if registry.build("state_dict_adapter", n).layout == layout]
        raise UserError(f"--format {layout}: backbone '{backbone}' declares no {layout} state-dict adapter "
                        f"(backbones that do: {', '.join(able) or 'none'}); use --format dtr")
    return adapter


def _adapter_reading(config: Mapping[str, Any], space: str) -> tuple[str, StateDictAdapter] | None:
    """``(backbone name, adapter)`` of the first installed backbone (by name) whose adapter loads a foreign
    folder with this ``config.json`` into ``space`` (``pixels``, or ``latents`` for a pipeline with a VAE)."""
    from dtr_plugins.core.plugins import default_registry

    registry = default_registry()
    for name in registry.names("state_dict_adapter"):
        adapter = registry.build("state_dict_adapter", name)
        if adapter.input_space == space and adapter.reads(config):
            return name, adapter
    return None


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}; expected a folder written by dtr export (config.json, "
                              f"{WEIGHTS_FILE}) or a diffusers DiTTransformer2DModel folder")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _load_weights(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from dtr_plugins.core.checkpoint import refuse_nonfinite

    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({first_line(exc)})") from None
    refuse_nonfinite(state, f"{path}: the exported weights")
    return state


def _load_export(folder: Path, config: dict[str, Any]):
    from dtr_plugins.compose import compose
    from dtr_plugins.core.checkpoint import apply_checkpoint
    from dtr_plugins.core.config import config_from_dict

    record = config.pop(EXPORT_KEY)
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        fmt = record.get("format") if isinstance(record, dict) else record
        raise CheckpointError(f"{folder / CONFIG_FILE}: {EXPORT_KEY}.format is {fmt!r}; this version reads "
                              f"{EXPORT_FORMAT!r}")
    cfg = config_from_dict(config, source=str(folder / CONFIG_FILE))
    path = folder / WEIGHTS_FILE  # shapes first: a config.json asking for a huge model allocates nothing
    check_config_fits_weights(lambda: compose(cfg, data=False, device="meta").model, path, folder / CONFIG_FILE)
    parts = compose(cfg, data=False)
    model = parts.model
    apply_checkpoint(model, _load_weights(path), path)
    return cfg, parts, {"weights": record.get("weights"), "step": record.get("step"), "weights_path": str(path)}


def _load_foreign(transformer: Path, pipeline: Path | None):
    """A foreign model folder (a diffusers transformer, or a pipeline's ``transformer/`` beside ``vae/`` and
    ``scheduler/``) through the state-dict adapter of the backbone that reads it. The config is the model's
    synthesised, model-only one: backbone (its geometry from the model's config), diffusion (the pipeline's
    scheduler), routing vanilla and the codec of a pipeline's VAE; no data section."""
    from dtr_plugins.compose import compose
    from dtr_plugins.core.checkpoint import apply_checkpoint
    from dtr_plugins.core.config import config_from_dict

    config = _read_config(transformer)
    vae_dir = pipeline / "vae" if pipeline is not None else None
    latents = vae_dir is not None and (vae_dir / CONFIG_FILE).is_file()
    found = _adapter_reading(config, "latents" if latents else "pixels")
    if found is None:
        raise CheckpointError(f"{transformer / CONFIG_FILE}: no installed backbone reads this model "
                              f"(_class_name {config.get('_class_name')!r})")
    backbone, adapter = found
    params = adapter.params_from_foreign_config(config, source=str(transformer / CONFIG_FILE))
    steps, schedule = _scheduler(pipeline)
    name = (pipeline or transformer).name or "foreign-model"
    diffusion: dict[str, Any] = {"steps": steps, "schedule": schedule}
    if "learn_sigma" in params:  # the backbone's output channels follow the process's learn_sigma
        diffusion["learn_sigma"] = params["learn_sigma"]
    cfg_dict: dict[str, Any] = {"name": name, "backbone": {"name": backbone, **params}, "diffusion": diffusion}
    if latents and vae_dir is not None:  # the backbone's own in_channels / input_size are the latent geometry
        cfg_dict["vae"] = {"path": str(vae_dir.resolve())}
    cfg = config_from_dict(cfg_dict, source=str(transformer / CONFIG_FILE))
    parts = compose(cfg, data=False)  # codec: the pipeline's vae/ (identity for a bare transformer folder)
    model = parts.model
    path = transformer / adapter.weights_file
    state = adapter.from_foreign_state_dict(_load_weights(path), params, source=str(path))
    apply_checkpoint(model, state, path)
    return cfg, parts, {"weights": adapter.layout, "step": None, "weights_path": str(path)}


def _scheduler(pipeline: Path | None) -> tuple[int, str]:
    """Training timesteps and schedule from a pipeline's ``scheduler/scheduler_config.json`` (default 1000, linear)."""
    path = pipeline / "scheduler" / "scheduler_config.json" if pipeline is not None else None
    if path is None or not path.is_file():
        return 1000, "linear"
    config = _read_config_file(path)
    steps = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    if kind == "squaredcos_cap_v2":
        return steps, "cosine"
    if kind != "linear":
        raise CheckpointError(f"{path}: beta_schedule={kind!r} has no counterpart here (allowed: linear, "
                              "squaredcos_cap_v2)")
    scale = 1000 / steps  # guided-diffusion's linear schedule (DiT's)
    for key, value in (("beta_start", 0.0001 * scale), ("beta_end", 0.02 * scale)):
        if key in config and abs(float(config[key]) - value) > 1e-9:
            raise CheckpointError(f"{path}: {key}={config[key]} differs from the linear schedule used here "
                                  f"({value:g} for {steps} steps)")
    return steps, "linear"


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read: {first_line(exc)}") from None
    return data if isinstance(data, dict) else {}


#################################################################################
#                                 Hub ids                                       #
#################################################################################

def parse_hub_id(source: str) -> tuple[str, str | None] | None:
    """``hf://ORG/NAME[@REV]`` or ``ORG/NAME[@REV]`` -> ``(repo_id, revision)``; None if it is not one."""
    text = source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source
    repo, _, revision = text.partition("@")
    if not _REPO_ID.match(repo) or ".." in repo:
        return None
    return repo, revision or None


def resolve(source: str | Path) -> Path:
    """A local folder as is; ``hf://ORG/NAME`` (or ``ORG/NAME`` that is no local path) through the hub cache."""
    text = str(source)
    if not text.startswith(HUB_PREFIX):
        local = Path(text).expanduser()
        if local.is_dir():
            return local
        if local.exists():
            raise CheckpointError(f"{source}: is a file; expected an exported model folder, a diffusers folder or "
                                  "a hub id (hf://ORG/NAME)")
        if text.startswith(("/", ".", "~")) or parse_hub_id(text) is None:
            raise CheckpointError(f"{source}: no such folder (a hub id is written hf://ORG/NAME)")
    parsed = parse_hub_id(text)
    if parsed is None:
        raise CheckpointError(f"{source}: not a hub id (expected hf://ORG/NAME or hf://ORG/NAME@REVISION)")
    return _hub_snapshot(*parsed)


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    from dtr_plugins.core.hf_hub import HubUnavailable, snapshot

    try:
        return snapshot(repo_id, HUB_PATTERNS, revision=revision, complete=_complete)
    except HubUnavailable as why:
        raise CheckpointError(_not_available(repo_id, _scrub(str(why)))) from None


def _complete(folder: Path) -> bool:
    """A cached snapshot holds a whole model (not only a config fetched for something else)."""
    weights = ("model.safetensors", "diffusion_pytorch_model.safetensors",
               "transformer/diffusion_pytorch_model.safetensors")
    return any((folder / w).is_file() for w in weights)


def _not_available(repo_id: str, why: str) -> str:
    return (f"hf://{repo_id}: cannot load this hub model: {why}; on a machine with network run "
            f"hf download {repo_id} --local-dir DIR (huggingface_hub's CLI), copy DIR here and pass the folder "
            f"instead (dtr sample DIR, dp.from_pretrained('DIR'))")


_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")


def _scrub(text: str, secrets: list[str] | None = None) -> str:
    for secret in secrets or []:
        if secret:
            text = text.replace(secret, "***")
    return _TOKEN_LIKE.sub("hf_***", text)
