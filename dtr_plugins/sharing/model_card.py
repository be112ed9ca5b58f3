"""The model card (``README.md``) of an exported model: what it is, its metrics and how they were measured.

The metrics come from the run's ``eval.json`` (written at the end of training from the EMA weights) and
are reported with what was applied to get them: step, weights, sampler, respacing, guidance scale,
sample count, feature extractor (and its weights' SHA-256), reference, seed, precision and world size.
When the exported weights are not the evaluated ones (``--weights model``, or another step) the card
shows no metrics and says why. A rank-deficient FID (``fid_rank_deficient``) carries its warning.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

from dtr_plugins.core.metrics import card_titles

#: provenance keys of eval.json, not metrics
_PROVENANCE = {"step", "sampler", "respacing", "cfg_scale", "cfg_channels", "train_precision", "world_size", "seed",
               "feature_extractor", "weights_sha256", "num_samples", "num_reference", "image_size",
               "reference_image_size", "samples", "reference", "kid_subset_size", "reference_cache"}


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
    return {"ema": "EMA", "model": "raw (non-EMA)"}.get(str(weights), str(weights))


def _describe_model(cfg: Mapping[str, Any]) -> str:
    backbone = dict(cfg["backbone"])
    name = backbone.pop("name")
    size = backbone.get("size")
    dims = ", ".join(f"{k}={backbone[k]}" for k in ("input_size", "patch_size", "hidden_size", "depth", "num_heads",
                                                       "in_channels", "num_classes") if backbone.get(k) is not None)
    routing = dict(cfg.get("routing") or {"name": "vanilla"})
    rname = routing.pop("name")
    rparams = ", ".join(f"{k}={v}" for k, v in routing.items())
    text = f"backbone `{name}`" + (f" {size}" if size else "") + (f" ({dims})" if dims else "")
    text += f", routing `{rname}`" + (f" ({rparams})" if rparams else "")
    diffusion = cfg.get("diffusion") or {}
    text += (f", diffusion with {diffusion.get('steps')} training timesteps ({diffusion.get('schedule')} schedule, "
             f"learned variance: {diffusion.get('learn_sigma')})")
    vae = cfg.get("vae")
    if vae:
        scale = vae.get("scale_factor") or "from its config"
        text += f", on the latents of the VAE `{vae['path']}` (scale factor {scale})"
    return text


def _metrics_section(record: Mapping[str, Any], evaluation: Mapping[str, Any] | None) -> list[str]:
    """The metrics of exactly the exported weights (same step, same EMA-or-not), or a sentence why none."""
    lines = ["## Metrics", ""]
    if not evaluation:
        return lines + ["No evaluation was recorded for this run (no `eval.json`).", ""]
    values = metrics_of(evaluation)
    if not values:
        return lines + ["The run's `eval.json` holds no metric values.", ""]
    step, weights = evaluation.get("step"), evaluated_weights(evaluation)
    mismatch = []
    if weights != record.get("weights"):
        mismatch.append(f"the **{_weights_label(weights)}** weights")
    if step is None or record.get("step") is None or int(step) != int(record["step"]):
        mismatch.append(f"training step {step}")
    if mismatch:
        return lines + [f"No metrics are shown: the run's `eval.json` was measured on {' at '.join(mismatch)}, "
                        f"not on these weights (the **{_weights_label(record.get('weights'))}** weights of training "
                        f"step {record.get('step')}); evaluate this folder with `dtr sample` and `dtr eval` to measure "
                        "them.", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {card_titles()[k]} | {v:.4g} |" for k, v in values.items()]
    lines.append("")
    lines.append("How they were measured (as recorded in the run's `eval.json`): "
                 f"{evaluation.get('num_samples', '?')} samples from the **{_weights_label(weights)}** weights at "
                 f"training step {step}, sampler `{evaluation.get('sampler', '?')}` with timestep respacing "
                 f"`{evaluation.get('respacing')}` ({evaluation.get('model_evaluations_per_image', '?')} network "
                 f"evaluations per image), guidance scale {evaluation.get('cfg_scale', '?')} "
                 f"(channels: {evaluation.get('cfg_channels', '?')}), "
                 f"seed {evaluation.get('seed', '?')}; features from `{evaluation.get('feature_extractor', '?')}` "
                 f"(weights sha256 `{str(evaluation.get('weights_sha256') or '-')[:16]}`), against "
                 f"`{evaluation.get('reference', '?')}` ({evaluation.get('num_reference', '?')} images); "
                 f"trained in {evaluation.get('train_precision', '?')} on {evaluation.get('world_size', '?')} "
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
    return (f"this FID comes from {evaluation.get('num_samples', '?')} samples and "
            f"{evaluation.get('num_reference', '?')} reference images with {dim}-dimensional features; a "
            f"covariance from N <= {dim} images is rank-deficient, so the FID is biased and not comparable with "
            "FIDs from more images")


def render_model_card(cfg: Mapping[str, Any], record: Mapping[str, Any], evaluation: Mapping[str, Any] | None,
                      meta: Mapping[str, Any] | None = None, *, layout_note: str | None = None,
                      repo_hint: str = "ORG/NAME") -> str:
    """``README.md`` text: front matter, description, metrics with provenance, usage and the full config.

    ``cfg``: the resolved run config (a plain dict). ``record``: the export record (``weights``, ``step``,
    ``checkpoint``, ``weights_sha256``). ``evaluation``: the run's ``eval.json`` or None. ``meta``: the
    run's ``meta.json`` or None. ``layout_note``: extra text for a non-default layout (diffusers).
    """
    name = cfg.get("name", "model")
    front = {"library_name": "dtr-plugins", "tags": ["diffusion", "dit", "task-routing", "dtr-plugins"]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {name}", "",
             f"A diffusion model trained with dtr-plugins ({_describe_model(cfg)}).", "",
             f"Weights: the **{record.get('weights')}** weights of checkpoint `{record.get('checkpoint')}` "
             f"(training step {record.get('step')}); `{record.get('weights_file')}` sha256 "
             f"`{record.get('weights_sha256')}`.", ""]
    vae, codec = cfg.get("vae"), cfg.get("codec")
    if vae:
        lines += [f"The VAE is not part of this folder: `vae.path` (`{vae['path']}`) must resolve where the model is "
                  "loaded (a hub id, or a local diffusers AutoencoderKL folder).", ""]
    elif codec and codec.get("name") != "identity":
        lines += [f"The codec `{codec['name']}` is not part of this folder: its `codec` section in `config.json` "
                  "(e.g. its `path`) must resolve where the model is loaded.", ""]
    if layout_note:
        lines += [layout_note, ""]
    lines += _metrics_section(record, evaluation)
    lines += ["## Use", "", "```bash", f"dtr sample hf://{repo_hint} --num-samples 64 --out samples/{name}",
              "dtr sample path/to/this/folder --num-samples 64 --out samples/local", "```", "", "```python",
              "import dtr_plugins as dp", f'model, cfg, codec = dp.from_pretrained("{repo_hint}")  # or a local folder',
              "from dtr_plugins.sampling.sample import generate",
              "images, labels = generate(model, dp.build_diffusion(cfg), cfg, 16, codec=codec)  # uint8 NHWC",
              "```", ""]
    if meta:
        keep = {k: meta[k] for k in ("dtr_plugins", "torch", "git_commit", "device", "world_size", "precision", "seed",
                                     "started", "finished") if k in meta}
        lines += ["## Training run", "", "```json", json.dumps(keep, indent=2), "```", ""]
    lines += ["## Config", "", "The resolved run config (also in `config.json`):", "", "```yaml",
              yaml.safe_dump(dict(cfg), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
