"""Score samples against a reference: FID, IS, KID, precision/recall (torch-fidelity), class accuracy.

The jobs live in :mod:`dtr_plugins.evaluation`: ``inputs`` (folders, npz, arrays, datasets),
``references`` (reference syntax and content identity), ``features`` (torch-fidelity's extractors),
``stats_cache`` (reference statistics and their pickle-free cache) and ``metrics`` (settings, checks and the
metric computation). This module wires them together.

Inputs
------
``samples``: a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``; read recursively), an
``.npz`` in the ADM evaluator layout (``arr_0``: ``uint8`` NHWC; the class each sample was generated for from
``labels`` or guided-diffusion's ``arr_1``), or a ``uint8`` NHWC array.

``reference``: a folder (read recursively, so class subfolders work), an ``.npz``, or a dataset plugin written
``dataset:NAME?key=value&...`` (see :mod:`dtr_plugins.evaluation.references`).

Grayscale images are expanded to RGB. All images of one input must share one size; the two inputs may differ
(a warning says so): every extractor resizes its input to its own resolution (Inception to 299x299,
``digits-classifier`` to 8x8).

Output
------
A dict (the eval record): torch-fidelity's metric keys (``frechet_inception_distance``,
``inception_score_mean``/``_std``, ``kernel_inception_distance_mean``/``_std``, ``precision``, ``recall``,
``f_score``), with FID ``fid_rank_deficient`` and ``fid_feature_dim``, ``class_accuracy`` when the extractor
is a classifier and the samples' labels are known, then what was applied: ``feature_extractor``,
``weights_sha256``, ``feature_layers``, ``num_samples``, ``sample_labels`` (where the labels came from, or
``None``), ``image_size``, ``samples``, ``reference``, ``reference_fingerprint`` (SHA-256 of the reference's
content identity), ``num_reference``, ``reference_image_size``, ``reference_cache`` (``hit``, ``miss`` or
``off``), the metric settings (``kid_subset_size``, ``kid_subsets``, ``prc_neighborhood``, ``isc_splits``,
``rng_seed`` where they apply), ``torch_fidelity`` (its version) and ``device``; then, under ``provenance``, how
the samples were made (sampler,
steps, guidance scale, EMA, seeds, precision, world size...): the JSON file beside an ``.npz`` with the same
stem (``samples.json``, written by ``dtr sample``; its path in ``provenance_file``), updated by the caller's
``provenance`` argument. It is a key of its own so that none of it can be mistaken for (or overwrite) a
measured value: ``precision`` is a metric.

Reference statistics are cached under ``cache_dir`` (default ``$DTR_CACHE_DIR/reference-stats``) by content
(see :mod:`dtr_plugins.evaluation.stats_cache`); torch-fidelity's own (pickle) cache is never used.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dtr_plugins.core.contracts import SupportsExtractorRecord
from dtr_plugins.core.errors import DataError
from dtr_plugins.core.images import to_uint8
from dtr_plugins.core.io import write_json
from dtr_plugins.evaluation.features import (
    Extractor,
    check_layers,
    device_of,
    feature_layers,
    predict_classes,
)
from dtr_plugins.evaluation.inputs import (
    ImageSet,
    load_images,
    provenance_beside,
)
from dtr_plugins.evaluation.metrics import (
    BINARY_METRICS,
    FEATURE_OPTIONS,
    FRECHET_METRICS,
    METRICS,
    check_eval_settings,
    check_fidelity_options,
    check_metric_names,
    class_accuracy,
    compute_metrics,
    metric_settings,
    settings_problem,
)
from dtr_plugins.evaluation.references import (
    Reference,
    dataset_reference,
    default_registry,
    parse_dataset_reference,
    resolve_reference,
)
from dtr_plugins.evaluation.stats_cache import (
    ReferenceStats,
    StatsCache,
    fid_statistics,
)
from dtr_plugins.extractors.builtin import (
    EvalError,
    FeatureExtractorSpec,
    cache_root,
    file_sha256,
)

__all__ = [
    "METRICS",
    "EvalError",
    "EvalSettings",
    "check_eval_settings",
    "dataset_reference",
    "describe_metrics",
    "evaluate",
    "evaluate_model_samples",
    "load_images",
    "parse_dataset_reference",
    "to_uint8",
]


@dataclass(frozen=True)
class EvalSettings:
    """How samples are scored (the options of ``dtr eval``; see :func:`evaluate`)."""

    metrics: Sequence[str] = ("fid",)  #: any of ``fid``, ``isc``, ``kid``, ``prc``
    feature_extractor: str = "inception-v3-compat"  #: a registered feature-extractor plugin
    weights_path: str | os.PathLike | None = None  #: the extractor's local weights file
    #: the extractor plugin's other parameters (its params model checks them), e.g. ``{"data_path": ...}``
    extractor_params: Mapping[str, Any] | None = None
    num_classes: int | None = None  #: the model's class count, checked against the extractor's
    cache_dir: str | os.PathLike | None = None  #: where reference statistics are cached
    batch_size: int = 64  #: images per extractor batch
    device: Any = None  #: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda if present)
    cache: bool = True  #: False: no reference-statistics cache
    verbose: bool | None = None  #: progress on stderr (default: when stderr is a terminal)
    fidelity_options: dict[str, Any] | None = None  #: torch-fidelity settings (``metrics.FIDELITY_OPTIONS``)


def evaluate(samples: Any, reference: Any, settings: EvalSettings | None = None, *,
             metrics: Sequence[str] | None = None, feature_extractor: str | None = None,
             cache_dir: str | os.PathLike | None = None, labels: Any = None, out: str | os.PathLike | None = None,
             registry=None,
             provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score ``samples`` against ``reference`` (see the module docstring for the inputs and the record).

    ``settings``: :class:`EvalSettings` (the fields below but ``labels``, ``out``, ``registry``, ``provenance``);
    ``metrics``, ``feature_extractor`` and ``cache_dir``, when given, replace those of ``settings``.
    ``metrics``: any of ``fid``, ``isc``, ``kid``, ``prc``.
    ``feature_extractor``: a registered feature-extractor
    plugin (``inception-v3-compat``, ``digits-classifier``). ``weights_path``: the extractor's local weights file.
    ``labels``: the class of each sample (overrides an npz's); ``num_classes``: the model's class count, checked
    against the extractor's before ``class_accuracy``. ``cache_dir``: where reference statistics are cached;
    ``cache=False`` disables it. ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda if present).
    ``verbose``: progress on stderr (default: when stderr is a terminal). ``out``: also write the record there
    as JSON (atomically). ``fidelity_options``: torch-fidelity settings (``kid_subsets``, ``kid_subset_size``,
    ``rng_seed``, ``isc_splits``, ``prc_neighborhood``...; see ``metrics.FIDELITY_OPTIONS``). ``provenance``:
    how the samples were made (a dict, stored in the record under ``provenance``). Bad input raises a
    :class:`~dtr_plugins.core.errors.UserError` subclass with a one-line message, before features are computed.
    """
    given: dict[str, Any] = {"metrics": metrics, "feature_extractor": feature_extractor, "cache_dir": cache_dir}
    s = replace(settings or EvalSettings(), **{k: v for k, v in given.items() if v is not None})
    feature_extractor, weights_path, batch_size = s.feature_extractor, s.weights_path, s.batch_size
    metrics = check_metric_names(s.metrics)
    if batch_size < 1:
        raise EvalError(f"batch_size: must be at least 1, got {batch_size}")
    options = check_fidelity_options(s.fidelity_options)
    dev = device_of(s.device)
    verbose = sys.stderr.isatty() if s.verbose is None else bool(s.verbose)

    if provenance is not None and not isinstance(provenance, dict):
        raise EvalError(f"provenance: must be a dict, got {type(provenance).__name__}")
    images = load_images(samples, labels)
    beside = provenance_beside(samples)
    problem = settings_problem(metrics, len(images), options)
    if problem:
        raise DataError(f"{images.source}: {problem}")
    registry = default_registry(registry)
    binary = [m for m in metrics if m in BINARY_METRICS]
    ref = resolve_reference(reference, images.size, registry) if binary else None  # a bad --ref before weights
    params = {**(s.extractor_params or {}), **({"weights_path": str(weights_path)} if weights_path else {})}
    spec: FeatureExtractorSpec = registry.build("feature_extractor", feature_extractor, **params)
    weights_sha = file_sha256(spec.weights_path) if spec.weights_path else None
    layers = feature_layers(spec)
    check_layers(spec, metrics, layers)
    feature_options = {k: options[k] for k in FEATURE_OPTIONS if k in options}
    extractor = Extractor(spec, [layers[m] for m in metrics], dev, batch_size, verbose, feature_options)

    ref_stats = None
    cache_state = "off"
    if ref is not None:
        store = StatsCache(Path(s.cache_dir) if s.cache_dir else cache_root() / "reference-stats", s.cache)
        key = {"reference": ref.key, "feature_extractor": spec.name, "weights_sha256": weights_sha,
               "torch_fidelity": _fidelity_version(), "options": feature_options}
        ref_stats, cache_state = reference_statistics(ref, binary, layers, extractor, store, key, options)
        if ref_stats.num_images and ref_stats.image_size != images.size:
            warnings.warn(f"samples are {images.size[1]}x{images.size[0]}, the reference "
                          f"{ref_stats.image_size[1]}x{ref_stats.image_size[0]}; {spec.name} resizes both to its "
                          f"input size", stacklevel=2)

    features = extractor(images.dataset, save_cpu_ram=_save_cpu_ram(images))
    applied = metric_settings(metrics, len(images), ref_stats.num_images or None if ref_stats else None, options)
    record = compute_metrics(metrics, features, ref_stats, layers, applied, verbose=verbose)
    accuracy = _class_accuracy(spec, images, dev, batch_size, s.num_classes)
    if accuracy is not None:
        record["class_accuracy"] = accuracy
    record.update({
        "feature_extractor": spec.name,
        "weights_sha256": weights_sha,
        "feature_layers": {m: layers[m] for m in metrics},
        "num_samples": len(images),
        "sample_labels": images.labels_from,
        "image_size": list(images.size),
        "samples": images.source,
    })
    if isinstance(spec, SupportsExtractorRecord):  # e.g. a classifier's test accuracy, beside its numbers
        record["feature_extractor_record"] = dict(spec.record())
    if ref is not None and ref_stats is not None:  # set together
        record.update({"reference": ref.label, "reference_fingerprint": ref.fingerprint,
                       "num_reference": ref_stats.num_images or None,  # None: a statistics file
                       "reference_image_size": list(ref_stats.image_size) if ref_stats.num_images else None})
    record["reference_cache"] = cache_state
    record.update(applied.record(metrics))
    record.update({"torch_fidelity": _fidelity_version(), "device": str(dev)})
    if beside is not None or provenance is not None:
        record["provenance"] = {**(beside[0] if beside else {}), **(provenance or {})}
        if beside is not None:
            record["provenance_file"] = beside[1]
    if out is not None:
        write_json(Path(out), record)
    return record


def reference_statistics(ref: Reference, metrics: Sequence[str], layers: dict[str, str], extractor: Extractor,
                         store: StatsCache, key: dict[str, Any], options: dict[str, Any]
                         ) -> tuple[ReferenceStats, str]:
    """The reference's statistics for ``metrics`` (FID mean/covariance, features for KID and precision/recall)
    and where they came from (``hit``, ``miss``, ``off``, or ``statistics``: a statistics ``.npz``, read as is).
    On a hit the reference is never loaded; on a miss
    it is loaded, checked for size, extracted, and saved (merged with what the entry held)."""
    frechet_metrics = [m for m in metrics if m in FRECHET_METRICS]
    fid_layers = {layers[m] for m in frechet_metrics}
    feature_layers_needed = {layers[m] for m in metrics if m in ("kid", "prc")}
    if ref.statistics is not None:  # a statistics file: Fréchet metrics only, the number of images is not known (0)
        if feature_layers_needed:
            ref.load()  # the one-line EvalError: no reference images for kid / prc
        return ReferenceStats(0, (0, 0), {}, {layers[m]: ref.statistics(m) for m in frechet_metrics}), "statistics"
    name = store.entry_name(ref.slug, key)
    cached = store.load(name, key)
    if cached is not None:
        _check_reference_count(ref, metrics, cached.num_images, options)
        if cached.covers(feature_layers_needed, fid_layers):
            return cached, "hit"
    loaded: ImageSet = ref.load()
    _check_reference_count(ref, metrics, len(loaded), options)
    feats = extractor(loaded.dataset, save_cpu_ram=_save_cpu_ram(loaded))
    stats = ReferenceStats(len(loaded), (loaded.size[0], loaded.size[1]),
                           {layer: feats[layer] for layer in feature_layers_needed},
                           {layer: fid_statistics(feats[layer]) for layer in fid_layers})
    stats = stats.merged(cached)
    store.save(name, key, stats, ref.label)
    return stats, "miss" if store.enabled else "off"


def _check_reference_count(ref: Reference, metrics: Sequence[str], count: int, options: dict[str, Any]) -> None:
    problem = settings_problem(metrics, count, {k: v for k, v in options.items() if k != "isc_splits"})
    if problem:
        raise DataError(f"reference {ref.label}: {problem}")


def _save_cpu_ram(images: ImageSet) -> bool:
    """No DataLoader workers for arrays (they need none) and for up to 10,000 files (start-up costs more)."""
    return images.in_memory or len(images) <= 10000


def _fidelity_version() -> str:
    import torch_fidelity

    return torch_fidelity.__version__


def _class_accuracy(spec: FeatureExtractorSpec, images: ImageSet, device, batch_size: int,
                    num_classes: int | None) -> float | None:
    labels = images.labels
    if spec.classifier is None or labels is None:
        return None
    if num_classes is not None and spec.num_classes is not None and num_classes != spec.num_classes:
        warnings.warn(f"class_accuracy skipped: the samples have {num_classes} classes, "
                      f"{spec.name} knows {spec.num_classes}", stacklevel=3)
        return None
    if spec.num_classes is not None and (labels.min() < 0 or labels.max() >= spec.num_classes):
        warnings.warn(f"class_accuracy skipped: sample labels outside 0..{spec.num_classes - 1}", stacklevel=3)
        return None
    predicted = predict_classes(spec, images.dataset, device, batch_size)
    return None if predicted is None else class_accuracy(predicted, labels)


def evaluate_model_samples(images_uint8_nhwc: np.ndarray, labels: np.ndarray | None, reference: str,
                           settings: EvalSettings, *, registry=None) -> dict[str, Any]:
    """Evaluate in-memory samples (``uint8`` NHWC ``[N, H, W, C]``, e.g. from the trainer's EMA model).

    ``labels``: the class each sample was generated for (``None`` for unconditional models). See
    :func:`evaluate` for ``settings``, ``registry`` and the record.
    """
    return evaluate(images_uint8_nhwc, reference, settings, labels=labels, registry=registry)


def describe_metrics(result: dict[str, Any]) -> str:
    """The known metrics of an evaluation record in one line, e.g. ``FID 12.35, KID 0.001235, precision 0.8``
    (titles of :func:`~dtr_plugins.experiments.compare.metric_info`,
    values by :func:`~dtr_plugins.core.numbers.fmt`)."""
    from dtr_plugins.core.numbers import fmt
    from dtr_plugins.experiments.compare import metric_info

    parts = []
    for key, value in result.items():
        info = metric_info(key)
        if info is None or key == "train_loss" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        parts.append(f"{info[0]} {fmt(value)}")
    return ", ".join(parts) or "no metric computed"
