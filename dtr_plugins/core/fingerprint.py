"""Identity of a resumable run by content: a fingerprint of the resolved config minus what may change on resume.

A run resumed with another config would otherwise continue silently and its ``config.yaml`` would claim the
new values for the whole run. The fingerprint is stored in every checkpoint (``config_fingerprint``) and in
``meta.json``; ``dtr train --resume`` compares it and names the first key that differs.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["RESUMABLE_KEYS", "config_fingerprint", "identity_config", "first_difference"]

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
#: - ``eval.*``, ``sample.*``: evaluation settings; every evaluation record states the settings it applied;
#: - ``log.*``: experiment trackers only mirror ``metrics.jsonl``;
#: - ``codec.cache_dir``, ``vae.cache_dir``: where a latent cache lives (its content is keyed by the codec).
#:
#: Everything else (model, routing, diffusion, loss weighting, data, codec, seed, batch size, learning rate,
#: precision, EMA, ...) is part of the run's identity.
RESUMABLE_KEYS: tuple[str, ...] = (
    "name", "output_dir",
    "train.steps", "train.ckpt_every", "train.log_every", "train.keep_last", "train.num_workers", "train.device",
    "train.compile", "train.activation_checkpointing", "train.grad_accum_steps", "train.tf32",
    "eval.*", "sample.*", "log.*", "codec.cache_dir", "vae.cache_dir",
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


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`identity_config`."""
    text = json.dumps(identity_config(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first dotted key (sorted) whose value differs between two configs' identities, with both values;
    a key missing on one side has the value ``"<unset>"``. None when the identities agree."""
    a, b = identity_config(old), identity_config(new)
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        if va != vb:
            return key, va, vb
    return None
