"""The model card (``README.md``) of an exported model: what it is, its metrics and how they were measured.

The metrics come from the run's ``eval.json`` (written at the end of training from the EMA weights) and
are reported with what was applied to get them: step, weights, sampler, respacing, guidance scale,
sample count, feature extractor (and its weights' SHA-256), reference, seed, precision and world size.
When the exported weights are not the evaluated ones (``--weights model``, or another step) the card
says so instead of attributing the numbers to them.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

#: eval.json key -> name shown on the card (in this order); other numeric keys follow as they are.
_METRIC_NAMES = {
    "frechet_inception_distance": "FID",
    "inception_score_mean": "Inception score (mean)",
    "inception_score_std": "Inception score (std)",
    "kernel_inception_distance_mean": "KID (mean)",
    "kernel_inception_distance_std": "KID (std)",
    "precision": "precision",
    "recall": "recall",
    "f_score": "F-score",
    "class_accuracy": "class accuracy",
}
#: provenance keys of eval.json, not metrics
_PROVENANCE = {"step", "sampler", "respacing", "cfg_scale", "cfg_channels", "train_precision", "world_size", "seed",
               "feature_extractor", "weights_sha256", "num_samples", "num_reference", "image_size",
               "reference_image_size", "samples", "reference", "kid_subset_size", "reference_cache"}


def metrics_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The metric values of an ``eval.json`` record (numbers only; provenance keys left out)."""
    ordered = {k: float(result[k]) for k in _METRIC_NAMES if isinstance(result.get(k), (int, float))}
    ordered.update({k: float(v) for k, v in result.items()
                    if k not in ordered and k not in _PROVENANCE and isinstance(v, (int, float))
                    and not isinstance(v, bool)})
    return ordered


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
    lines = ["## Metrics", ""]
    if not evaluation:
        return lines + ["No evaluation was recorded for this run (no `eval.json`).", ""]
    values = metrics_of(evaluation)
    if not values:
        return lines + ["The run's `eval.json` holds no metric values.", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {_METRIC_NAMES.get(k, k)} | {v:.4g} |" for k, v in values.items()]
    lines.append("")
    step = evaluation.get("step")
    steps = evaluation.get("respacing")
    lines.append("How they were measured (as recorded in the run's `eval.json`): "
                 f"{evaluation.get('num_samples', '?')} samples from the **EMA** weights at training step {step}, "
                 f"sampler `{evaluation.get('sampler', '?')}` with timestep respacing `{steps}`, "
                 f"guidance scale {evaluation.get('cfg_scale', '?')} "
                 f"(channels: {evaluation.get('cfg_channels', '?')}), "
                 f"seed {evaluation.get('seed', '?')}; features from `{evaluation.get('feature_extractor', '?')}` "
                 f"(weights sha256 `{str(evaluation.get('weights_sha256') or '-')[:16]}`), against "
                 f"`{evaluation.get('reference', '?')}` ({evaluation.get('num_reference', '?')} images); "
                 f"trained in {evaluation.get('train_precision', '?')} on {evaluation.get('world_size', '?')} "
                 "process(es).")
    caveats = []
    if record.get("weights") != "ema":
        caveats.append(f"the exported weights are the raw `{record.get('weights')}` weights, not the EMA weights "
                       "these metrics were measured with")
    if step is not None and record.get("step") is not None and int(step) != int(record["step"]):
        caveats.append(f"the exported checkpoint is from step {record['step']}, the metrics from step {step}")
    if caveats:
        lines += ["", "**Note:** " + "; ".join(caveats) + "."]
    return lines + [""]


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
              "from dtr_plugins.engine.sample import generate",
              "images, labels = generate(model, dp.build_diffusion(cfg), cfg, 16, codec=codec)  # uint8 NHWC",
              "```", ""]
    if meta:
        keep = {k: meta[k] for k in ("dtr_plugins", "torch", "git_commit", "device", "world_size", "precision", "seed",
                                     "started", "finished") if k in meta}
        lines += ["## Training run", "", "```json", json.dumps(keep, indent=2), "```", ""]
    lines += ["## Config", "", "The resolved run config (also in `config.json`):", "", "```yaml",
              yaml.safe_dump(dict(cfg), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
