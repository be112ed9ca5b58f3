"""The model card (``README.md``) of an exported model: what it is, its metrics and how they were measured.

The metrics come from the run's ``eval.json`` (written at the end of training from the EMA weights) and
are reported with what was applied to get them: step, weights, sampler, respacing, guidance scale,
sample count, feature extractor (and its weights' SHA-256), reference, seed, precision and world size.
When the exported weights are not the evaluated ones (``--weights model``, or another step) the card
shows no metrics and says why. A rank-deficient FID (``fid_rank_deficient``) carries its warning.

The YAML front matter is huggingface_hub's :class:`~huggingface_hub.ModelCardData`: ``library_name``,
``license`` (:data:`LICENSE`, the project's licence, unless the caller names another), ``tags`` and, when
the card shows metrics, a ``model-index`` with one :class:`~huggingface_hub.EvalResult` per metric (name,
value, dataset), which the hub shows as the model's evaluation results.
"""
from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from dtr_plugins.core.metrics import card_titles
from dtr_plugins.core.text import printable

#: the licence a model card declares unless told otherwise: the project's (LICENSE, MIT)
LICENSE = "mit"
#: the hub task of a DiT from this project: image generation (class-conditional when it has labels)
TASK_TYPE = "image-generation"

#: provenance keys of eval.json, not metrics
_PROVENANCE = {"step", "sampler", "respacing", "cfg_scale", "cfg_channels", "train_precision", "world_size", "seed",
               "feature_extractor", "weights_sha256", "num_samples", "num_reference", "image_size",
               "reference_image_size", "samples", "reference", "kid_subset_size", "reference_cache"}


def is_local_path(value: Any) -> bool:
    """True for an absolute local path (``/data/x``, ``~/x``, ``C:\\x``): shown on the card by its last
    component, and worth a warning before ``dtr push`` uploads the config that holds it."""
    return isinstance(value, str) and (value.startswith(("/", "~")) or bool(PureWindowsPath(value).drive))


def absolute_paths(data: Any, key: str = "") -> list[str]:
    """The dotted keys of ``data`` (nested dicts and lists) whose value is an absolute local path."""
    if isinstance(data, Mapping):
        return [k for name, v in data.items() for k in absolute_paths(v, f"{key}.{name}" if key else str(name))]
    if isinstance(data, list):
        return [k for i, v in enumerate(data) for k in absolute_paths(v, f"{key}.{i}")]
    return [key] if is_local_path(data) else []


def _shown(data: Any) -> Any:
    """``data`` with every absolute local path replaced by ``.../<last component>`` (nothing of the local
    machine's layout reaches the card)."""
    if isinstance(data, Mapping):
        return {k: _shown(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_shown(v) for v in data]
    if is_local_path(data):
        return ".../" + (PurePosixPath(data.replace("\\", "/")).name or "")
    return data


def _text(value: Any) -> str:
    """``value`` for Markdown prose: one line, HTML and Markdown syntax escaped."""
    line = printable(str(value))
    return re.sub(r"([\\`*_\[\]|#!])", r"\\\1", html.escape(line, quote=False))


def _val(mapping: Mapping[str, Any], key: str, default: Any = "?") -> str:
    return _text(mapping.get(key, default))


def _code(value: Any) -> str:
    """``value`` as an inline code span that no backtick or newline in it can close."""
    line = printable(str(value))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", line)), default=0) + 1)
    pad = " " if line.startswith("`") or line.endswith("`") else ""
    return f"{fence}{pad}{line}{pad}{fence}"


def _block(lang: str, text: str) -> list[str]:
    """A fenced code block whose fence is longer than any backtick run in ``text``."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return [f"{fence}{lang}", text, fence]


def metrics_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The metric values of an ``eval.json`` record, in the metric registry's order
    (:func:`dtr_plugins.core.metrics.card_titles`; settings such as ``model_evaluations_per_image``,
    ``fid_feature_dim`` or ``isc_splits`` are not metrics and are left out)."""
    return {k: float(result[k]) for k in card_titles()
            if isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool)}


def evaluated_weights(evaluation: Mapping[str, Any]) -> str:
    """Which weights ``eval.json`` measured: its ``weights`` (``ema`` or ``model``); records written before
    that key existed come from the end-of-training eval, which samples the EMA weights."""
    return str(evaluation.get("weights") or "ema")


def _weights_label(weights: Any) -> str:
    return {"ema": "EMA", "model": "raw (non-EMA)"}.get(str(weights), _text(weights))


def _describe_model(cfg: Mapping[str, Any]) -> str:
    backbone = dict(cfg["backbone"])
    name = backbone.pop("name")
    size = backbone.get("size")
    dims = ", ".join(f"{k}={_text(backbone[k])}" for k in ("input_size", "patch_size", "hidden_size", "depth",
                                                             "num_heads", "in_channels", "num_classes")
                     if backbone.get(k) is not None)
    routing = dict(cfg.get("routing") or {"name": "vanilla"})
    rname = routing.pop("name")
    rparams = ", ".join(f"{_text(k)}={_text(v)}" for k, v in routing.items())
    text = f"backbone {_code(name)}" + (f" {_text(size)}" if size else "") + (f" ({dims})" if dims else "")
    text += f", routing {_code(rname)}" + (f" ({rparams})" if rparams else "")
    diffusion = cfg.get("diffusion") or {}
    text += (f", diffusion with {_text(diffusion.get('steps'))} training timesteps ({_text(diffusion.get('schedule'))} "
             f"schedule, learned variance: {_text(diffusion.get('learn_sigma'))})")
    vae = cfg.get("vae")
    if vae:
        scale = _text(vae.get("scale_factor") or "from its config")
        text += f", on the latents of the VAE {_code(vae['path'])} (scale factor {scale})"
    return text


def _mismatch(record: Mapping[str, Any], evaluation: Mapping[str, Any]) -> list[str]:
    """Why ``eval.json`` does not describe the exported weights (other weights, other step); [] when it does."""
    step, weights = evaluation.get("step"), evaluated_weights(evaluation)
    mismatch = []
    if weights != record.get("weights"):
        mismatch.append(f"the **{_weights_label(weights)}** weights")
    if step is None or record.get("step") is None or int(step) != int(record["step"]):
        mismatch.append(f"training step {_text(step)}")
    return mismatch


def shown_metrics(record: Mapping[str, Any], evaluation: Mapping[str, Any] | None) -> dict[str, float]:
    """The metric values the card reports: those of ``eval.json`` when it measured exactly the exported
    weights (same step, same EMA-or-not), else none."""
    if not evaluation or _mismatch(record, evaluation):
        return {}
    return metrics_of(evaluation)


def card_data(cfg: Mapping[str, Any], record: Mapping[str, Any], evaluation: Mapping[str, Any] | None,
              license: str = LICENSE) -> Any:
    """The card's front matter as :class:`huggingface_hub.ModelCardData`: library, licence, tags and a
    ``model-index`` with the :func:`shown_metrics` (metric key as ``type``, card title as ``name``, the
    value, and the dataset: ``data.name`` as its type, ``eval.json``'s ``reference`` as its name)."""
    from huggingface_hub import EvalResult, ModelCardData

    data = cfg.get("data")
    dataset = str((data.get("name") if isinstance(data, Mapping) else None) or "unknown")
    reference = str((evaluation or {}).get("reference") or f"dataset:{dataset}")
    titles = card_titles()
    results = [EvalResult(task_type=TASK_TYPE, dataset_type=dataset, dataset_name=printable(reference),
                          metric_type=key, metric_name=titles[key], metric_value=value)
               for key, value in shown_metrics(record, evaluation).items()]
    return ModelCardData(library_name="dtr-plugins", license=license,
                         tags=["diffusion", "dit", "task-routing", "dtr-plugins"],
                         model_name=printable(str(cfg.get("name", "model"))) if results else None,
                         eval_results=results or None)


def _metrics_section(record: Mapping[str, Any], evaluation: Mapping[str, Any] | None) -> list[str]:
    """The metrics of exactly the exported weights (same step, same EMA-or-not), or a sentence why none."""
    lines = ["## Metrics", ""]
    if not evaluation:
        return lines + ["No evaluation was recorded for this run (no `eval.json`).", ""]
    values = metrics_of(evaluation)
    if not values:
        return lines + ["The run's `eval.json` holds no metric values.", ""]
    step, weights = evaluation.get("step"), evaluated_weights(evaluation)
    mismatch = _mismatch(record, evaluation)
    if mismatch:
        return lines + [f"No metrics are shown: the run's `eval.json` was measured on {' at '.join(mismatch)}, "
                        f"not on these weights (the **{_weights_label(record.get('weights'))}** weights of training "
                        f"step {_text(record.get('step'))}); evaluate this folder with `dtr sample` and `dtr eval` to "
                        "measure them.", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {card_titles()[k]} | {v:.4g} |" for k, v in values.items()]
    lines.append("")
    lines.append("How they were measured (as recorded in the run's `eval.json`): "
                 f"{_val(evaluation, 'num_samples')} samples from the **{_weights_label(weights)}** weights at "
                 f"training step {_text(step)}, sampler {_code(evaluation.get('sampler', '?'))} with timestep "
                 f"respacing "
                 f"{_code(evaluation.get('respacing'))} ({_val(evaluation, 'model_evaluations_per_image')} "
                 f"network "
                 f"evaluations per image), guidance scale {_val(evaluation, 'cfg_scale')} "
                 f"(channels: {_val(evaluation, 'cfg_channels')}), "
                 f"seed {_val(evaluation, 'seed')}; features from "
                 f"{_code(evaluation.get('feature_extractor', '?'))} "
                 f"(weights sha256 {_code(str(evaluation.get('weights_sha256') or '-')[:16])}), against "
                 f"{_code(evaluation.get('reference', '?'))} ({_val(evaluation, 'num_reference')} images); "
                 f"trained in {_val(evaluation, 'train_precision')} on {_val(evaluation, 'world_size')} "
                 "process(es).")
    warning = fid_caveat(evaluation)
    if warning and "frechet_inception_distance" in values:
        lines += ["", f"**Warning:** {warning}."]
    return lines + [""]


def fid_caveat(evaluation: Mapping[str, Any]) -> str | None:
    """The rank-deficiency warning for an eval record whose FID came from ``N <= D`` images on a side
    (``fid_rank_deficient``), worded as the evaluation warned; ``None`` otherwise."""
    if not evaluation.get("fid_rank_deficient"):
        return None
    dim = evaluation.get("fid_feature_dim", "?")
    return (f"this FID comes from {_val(evaluation, 'num_samples')} samples and "
            f"{_val(evaluation, 'num_reference')} reference images with {_text(dim)}-dimensional features; a "
            f"covariance from N <= {_text(dim)} images is rank-deficient, so the FID is biased and not comparable with "
            "FIDs from more images")


def render_model_card(cfg: Mapping[str, Any], record: Mapping[str, Any], evaluation: Mapping[str, Any] | None,
                      meta: Mapping[str, Any] | None = None, *, layout_note: str | None = None,
                      repo_hint: str = "ORG/NAME", license: str = LICENSE) -> str:
    """``README.md`` text: front matter, description, metrics with provenance, usage and the full config.

    ``cfg``: the resolved run config (a plain dict). ``record``: the export record (``weights``, ``step``,
    ``checkpoint``, ``weights_sha256``). ``evaluation``: the run's ``eval.json`` or None. ``meta``: the
    run's ``meta.json`` or None. ``layout_note``: extra text for a non-default layout (diffusers).
    ``license``: the hub licence id in the front matter (:data:`LICENSE` by default). The front matter is
    :func:`card_data`'s (``model-index`` with the shown metrics).
    """
    cfg = _shown(cfg)  # local paths by their last component
    name = cfg.get("name", "model")
    evaluation = _shown(evaluation) if evaluation else evaluation
    front = card_data(cfg, record, evaluation, license=license).to_yaml()
    lines = ["---", front.rstrip(), "---", "", f"# {_text(name)}", "",
             f"A diffusion model trained with dtr-plugins ({_describe_model(cfg)}).", "",
             f"Weights: the **{_text(record.get('weights'))}** weights of checkpoint {_code(record.get('checkpoint'))} "
             f"(training step {_text(record.get('step'))}); {_code(record.get('weights_file'))} sha256 "
             f"{_code(record.get('weights_sha256'))}.", ""]
    vae, codec = cfg.get("vae"), cfg.get("codec")
    if vae:
        lines += [f"The VAE is not part of this folder: `vae.path` ({_code(vae['path'])}) must resolve where the "
                  "model is loaded (a hub id, or a local diffusers AutoencoderKL folder).", ""]
    elif codec and codec.get("name") != "identity":
        lines += [f"The codec {_code(codec['name'])} is not part of this folder: its `codec` section in `config.json` "
                  "(e.g. its `path`) must resolve where the model is loaded.", ""]
    if layout_note:
        lines += [layout_note, ""]
    lines += _metrics_section(record, evaluation)
    lines += ["## Use", "", "```bash", f"dtr sample hf://{repo_hint} --num-samples 64 --out samples/{name}",
              "dtr sample path/to/this/folder --num-samples 64 --out samples/local", "```", "", "```python",
              "import dtr_plugins as dp", f'pipe = dp.DTRPipeline.from_pretrained("{repo_hint}")  # or a local folder',
              "images, labels = dp.generate(pipe.model, pipe.diffusion, pipe.cfg, 16, codec=pipe.codec)  # uint8 NHWC",
              "```", ""]
    if meta:
        keep = {k: meta[k] for k in ("dtr_plugins", "torch", "git_commit", "device", "world_size", "precision", "seed",
                                     "started", "finished", "parameters", "time_experts") if k in meta}
        lines += ["## Training run", "", *_block("json", json.dumps(keep, indent=2)), ""]
    lines += ["## Config", "", "The resolved run config (also in `config.json`; local paths shown by their last "
              "component):", "", *_block("yaml", yaml.safe_dump(dict(cfg), sort_keys=False).rstrip()), ""]
    return "\n".join(lines)
