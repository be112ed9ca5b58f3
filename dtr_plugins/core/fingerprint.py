"""The one identity rule of a run, with its two named fingerprints.

- :func:`weights_fingerprint`: *what may continue these weights*; the resolved config minus
  :data:`RESUMABLE_KEYS`. Stored in every checkpoint and in ``meta.json`` (under the on-disk key
  ``config_fingerprint``); ``dtr train --resume`` compares it and names the first key that differs.
- :func:`plan_fingerprint`: *what this planned run is*; the whole resolved config. A suite records it per run
  (``<run>/config.sha256``) to see that its file changed since the run was started.

The rule (:func:`resume_refusal`): a change of the plan whose weights fingerprint is unchanged (``train.steps``
raised, later sampling or evaluation settings, ...) continues the run from its checkpoint; any other change is
refused with the key that changed, its old value and its new one.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["RESUMABLE_KEYS", "weights_fingerprint", "plan_fingerprint", "identity_config", "first_difference",
           "resume_refusal", "changed_keys"]

#: Dotted config keys (a trailing ``.*`` means the whole section) that may change when a run is resumed,
#: because they do not change the weights a step produces:
#:
#: - ``name``, ``output_dir``: where the run lives, not what it computes;
#: - ``train.steps``: extending (or shortening) a run is what resuming is for;
#: - ``train.ckpt_every``, ``train.log_every``, ``train.keep_last``: what is written and kept, not the weights;
#: - ``train.num_workers``: data loading is exact with any number of workers (draws derive from seed, step, index);
#: - ``train.device``: a run may move between machines; each segment's device is recorded in ``meta.json``;
#: - ``train.compile``: the same math, compiled or not;
#: - ``train.activation_checkpointing``: the same math, activations kept or recomputed;
#: - ``train.grad_accum_steps``: the same images, noise and timesteps per optimizer step, split into
#:   micro-batches (equal in fp32 to rounding, like a change of world size); ``train.tf32``: a CUDA matmul
#:   mode, like ``train.device`` a property of the machine; each segment of ``meta.json`` records both as applied;
#: - ``train.threads``: CPU threads, a property of the machine too (a suite's local launcher gives each run
#:   ``cpu_count // parallel``, so ``--parallel`` must not change a run's identity); recorded per segment;
#: - ``eval.*``, ``sample.*``: evaluation settings; every evaluation record states the settings it applied;
#: - ``log.*``: experiment trackers only mirror ``metrics.jsonl``;
#: - ``codec.cache_dir``, ``vae.cache_dir``: where a latent cache lives (its content is keyed by the codec);
#: - ``ema.snapshot_every``: how often the EMA weights are also written to ``<run>/ema/``, not what they are.
#:
#: Everything else (model, routing, diffusion, loss weighting, data, codec, seed, batch size, learning rate,
#: precision, EMA, ...) is part of the run's identity.
RESUMABLE_KEYS: tuple[str, ...] = (
    "name", "output_dir",
    "train.steps", "train.ckpt_every", "train.log_every", "train.keep_last", "train.num_workers", "train.device",
    "train.compile", "train.activation_checkpointing", "train.grad_accum_steps", "train.tf32", "train.threads",
    "eval.*", "sample.*", "log.*", "codec.cache_dir", "vae.cache_dir", "ema.snapshot_every",
    "text.cache_dir", "text.eval_prompts", "text.clip_score_model",
)


def _resumable(key: str) -> bool:
    for pattern in RESUMABLE_KEYS:
        if pattern.endswith(".*") and (key == pattern[:-2] or key.startswith(pattern[:-1])):
            return True
        if key == pattern:
            return True
    return False


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and (data or not prefix):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def identity_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened ``{dotted key: value}`` of a resolved config (``cfg.to_dict()``) without :data:`RESUMABLE_KEYS`."""
    return {k: v for k, v in sorted(_flatten(config).items()) if not _resumable(k)}


def _sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_fingerprint(config: Mapping[str, Any]) -> str:
    """What may continue these weights: SHA-256 (hex) of the canonical JSON of :func:`identity_config` of a
    resolved config (``cfg.to_dict()``)."""
    return _sha256(identity_config(config))


def plan_fingerprint(config: Mapping[str, Any]) -> str:
    """What this planned run is: SHA-256 (hex) of the canonical JSON of the whole resolved config
    (``cfg.to_dict()``, defaults filled in); any change of any key changes it."""
    return _sha256(dict(config))


def resume_refusal(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """None when a run trained with config ``old`` may continue under ``new`` (only :data:`RESUMABLE_KEYS`
    differ); else one line ``key: old -> new`` naming the first key of the identity that changed."""
    if weights_fingerprint(old) == weights_fingerprint(new):
        return None
    diff = first_difference(old, new)
    if diff is None:  # pragma: no cover - equal identities have equal fingerprints
        return "the config identity changed"
    key, was, now = diff
    return f"{key}: {was!r} -> {now!r}"


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first dotted key (sorted) whose value differs between two configs' identities, with both values;
    a key missing on one side has the value ``"<unset>"``. None when the identities agree."""
    a, b = identity_config(old), identity_config(new)
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        if va != vb:
            return key, va, vb
    return None


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Every dotted key (sorted) whose value differs between two resolved configs, resumable or not."""
    a, b = _flatten(old), _flatten(new)
    return [k for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]
