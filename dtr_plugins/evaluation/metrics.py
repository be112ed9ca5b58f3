"""Metric settings and the metrics themselves: FID, IS, KID and precision/recall through torch-fidelity.

:func:`compute_metrics` is the one place that calls torch-fidelity's metric code, on features extracted by
:mod:`~dtr_plugins.evaluation.features` and reference statistics from
:mod:`~dtr_plugins.evaluation.stats_cache`:

- sFID (Nash et al. 2021, "Generating images with sparse representations"; ADM's ``evaluations/evaluator.py``):
  the same Fréchet distance on the extractor's ``sfid`` layer (Inception's spatial ``mixed_6/conv`` features,
  see :mod:`dtr_plugins.extractors.inception_spatial`).
- FID (Heusel et al. 2017): ``torch_fidelity.metric_fid.fid_statistics_to_metric`` on the two means and
  covariances. With ``N <= D`` images on a side (``D`` the feature dimension) that side's covariance is
  rank-deficient; the FID is still computed, but a warning names the counts and the record gets
  ``fid_rank_deficient: true``. A FID below 0 by at most :data:`FID_NEGATIVE_TOLERANCE` times the covariances'
  traces (matrix square-root round-off when the two sets are alike) is reported as 0; anything more negative
  is an :class:`EvalError`, never a negative FID.
- IS (Salimans et al. 2016): ``isc_features_to_metric`` on the samples' logits, in ``isc_splits`` splits.
  A split of one image always scores 1, so a given ``isc_splits`` needs 2 images per split; the record
  holds ``isc_images_per_split`` and a warning says when a split has fewer than :data:`ISC_MIN_PER_SPLIT`.
- KID (Binkowski et al. 2018): ``kid_features_to_metric``, ``kid_subsets`` subsets of ``kid_subset_size``.
- precision/recall (Kynkaanniemi et al. 2019): ``prc_features_to_metric`` with ``prc_neighborhood`` = k.

Settings: ``kid_subset_size`` defaults to ``min(1000, samples, reference)``, ``isc_splits`` to
``min(10, max(1, samples // ISC_MIN_PER_SPLIT))``, ``prc_neighborhood`` to 3; other torch-fidelity keys
(``kid_subsets``, ``rng_seed``, ``samples_shuffle``, ``kid_kernel``...) keep torch-fidelity's defaults unless
given. Too few images for the settings is one :class:`~dtr_plugins.core.errors.ConfigError` / ``DataError``
line found before any feature is computed (:func:`check_eval_settings`, :func:`settings_problem`).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.metrics import REGISTRY, frechet, needs_reference, selectable
from dtr_plugins.evaluation.stats_cache import ReferenceStats, fid_statistics
from dtr_plugins.extractors.builtin import EvalError

#: our metric name -> the keys torch-fidelity returns for it (from the registry, :mod:`dtr_plugins.core.metrics`;
#: a snapshot at import: the functions below read the registry itself)
METRICS: dict[str, tuple[str, ...]] = {m.name: tuple(v.key for v in m.values)
                                       for m in REGISTRY.values() if m.selectable}
BINARY_METRICS = needs_reference()  # compare against a reference
FRECHET_METRICS = frechet()  # compare against a reference's mean and covariance
KID_SUBSET_SIZE = 1000
PRC_NEIGHBORHOOD = 3
ISC_SPLITS = 10
#: images per Inception-Score split below which the score is biased low (a warning); the default splits keep to it
ISC_MIN_PER_SPLIT = 10
#: a negative FID down to this fraction of ``tr(S1) + tr(S2)`` (at least this much) is round-off, reported as 0
FID_NEGATIVE_TOLERANCE = 1e-6
#: the setting keys an eval config may carry (besides ``metrics``); None: derived from the sample count
SETTING_KEYS = ("kid_subset_size", "kid_subsets", "prc_neighborhood", "isc_splits")
#: torch-fidelity options a caller may set (``fidelity_options``): metric settings and the extractor's dtype
FIDELITY_OPTIONS = ("isc_splits", "kid_subsets", "kid_subset_size", "kid_kernel", "kid_kernel_poly_degree",
                    "kid_kernel_poly_gamma", "kid_kernel_poly_coef0", "kid_kernel_rbf_sigma", "prc_neighborhood",
                    "prc_batch_size", "samples_shuffle", "rng_seed", "feature_extractor_internal_dtype")
#: of those, the ones that change the features (so they are part of the reference cache key)
FEATURE_OPTIONS = ("feature_extractor_internal_dtype",)


def check_metric_names(metrics: Sequence[str]) -> list[str]:
    """``metrics`` without repeats, or :class:`EvalError` naming the unknown ones."""
    metrics = list(dict.fromkeys(metrics))
    allowed = selectable()
    unknown = [m for m in metrics if m not in allowed]
    if not metrics or unknown:
        raise EvalError(f"metrics: unknown {', '.join(map(repr, unknown))} (allowed: {', '.join(allowed)})"
                        if unknown else f"metrics: none given (allowed: {', '.join(allowed)})")
    return metrics


def settings_problem(metrics: Sequence[str], count: int, options: Mapping[str, Any] | None = None) -> str | None:
    """Why ``count`` images are too few for ``metrics`` with ``options`` (one phrase), or ``None`` if enough.

    Each metric's minimum comes from its :class:`MetricFunction` (``minimum``)."""
    options = options or {}
    for metric in metrics:
        minimum, what = FUNCTIONS[metric].minimum(options)
        if count < minimum:
            return f"{count} image(s) are too few for {what}; at least {minimum} needed"
    return None


def check_eval_settings(eval_cfg: Any, num_samples: int | None = None) -> None:
    """Refuse evaluation settings that cannot work with ``num_samples`` samples, before anything runs.

    ``eval_cfg``: a mapping or pydantic model with ``metrics`` and optionally ``num_samples``,
    ``kid_subset_size``, ``kid_subsets``, ``prc_neighborhood``, ``isc_splits``; ``num_samples`` defaults to
    ``eval_cfg["num_samples"]``. Raises :class:`ConfigError` with one line naming the ``eval.`` key.
    """
    from pydantic import BaseModel

    cfg = eval_cfg.model_dump() if isinstance(eval_cfg, BaseModel) else dict(eval_cfg)
    try:
        metrics = check_metric_names(cfg.get("metrics") or ["fid"])
    except EvalError as exc:
        raise ConfigError(f"eval.{exc}") from None
    n = cfg.get("num_samples") if num_samples is None else num_samples
    if n is None:
        raise ConfigError("eval.num_samples: not set (the number of samples to evaluate)")
    for key in SETTING_KEYS:
        value = cfg.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"eval.{key}: must be a positive integer, got {value!r}")
    problem = settings_problem(metrics, int(n), {k: cfg.get(k) for k in SETTING_KEYS})
    if problem:
        raise ConfigError(f"eval.num_samples: {problem} (raise eval.num_samples or change eval.metrics)")


@dataclass(frozen=True)
class MetricSettings:
    """What the metrics apply: derived sizes plus torch-fidelity keyword ``options`` (recorded as given)."""

    kid_subset_size: int
    isc_splits: int
    prc_neighborhood: int
    options: dict[str, Any]

    def fidelity_kwargs(self, verbose: bool, save_cpu_ram: bool) -> dict[str, Any]:
        return {**self.options, "kid_subset_size": self.kid_subset_size, "isc_splits": self.isc_splits,
                "prc_neighborhood": self.prc_neighborhood, "verbose": verbose, "save_cpu_ram": save_cpu_ram}

    def record(self, metrics: Sequence[str]) -> dict[str, Any]:
        """The settings that apply to ``metrics``, for the eval record."""
        from torch_fidelity.defaults import DEFAULTS

        out: dict[str, Any] = {}
        if "kid" in metrics:
            out.update(kid_subset_size=self.kid_subset_size,
                       kid_subsets=self.options.get("kid_subsets", DEFAULTS["kid_subsets"]))
        if "prc" in metrics:
            out["prc_neighborhood"] = self.prc_neighborhood
        if "isc" in metrics:
            out["isc_splits"] = self.isc_splits
        if any(m in metrics for m in ("kid", "isc")):
            out["rng_seed"] = self.options.get("rng_seed", DEFAULTS["rng_seed"])
        return out


def metric_settings(metrics: Sequence[str], num_samples: int, num_reference: int | None,
                    options: Mapping[str, Any] | None) -> MetricSettings:
    """Settings for ``num_samples`` samples against ``num_reference`` reference images (see the module doc).

    ``options``: torch-fidelity keyword arguments (:data:`FIDELITY_OPTIONS`; others raise :class:`EvalError`).
    """
    options = {k: v for k, v in check_fidelity_options(options).items() if k not in FEATURE_OPTIONS}
    smallest = min(num_samples, num_reference) if num_reference is not None else num_samples
    kid = options.pop("kid_subset_size", None) or min(KID_SUBSET_SIZE, smallest)
    splits = options.pop("isc_splits", None) or min(ISC_SPLITS, max(1, num_samples // ISC_MIN_PER_SPLIT))
    k = options.pop("prc_neighborhood", None) or PRC_NEIGHBORHOOD
    return MetricSettings(int(kid), int(splits), int(k), options)


def check_fidelity_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` as a dict, or :class:`EvalError` naming the keys not in :data:`FIDELITY_OPTIONS`."""
    options = dict(options or {})
    unknown = sorted(k for k in options if k not in FIDELITY_OPTIONS)
    if unknown:
        raise EvalError(f"fidelity_options: {', '.join(unknown)} not allowed (allowed: {', '.join(FIDELITY_OPTIONS)})")
    return options


def fid_rank_deficiency(num_samples: int, num_reference: int, dim: int) -> str | None:
    """A warning if either side has ``N <= D`` images (its ``D x D`` covariance then has rank ``< D``)."""
    if num_samples > dim and num_reference > dim:
        return None
    return (f"FID from {num_samples} samples and {num_reference} reference images with {dim}-dimensional "
            f"features: a covariance from N <= {dim} images is rank-deficient, so this FID is biased and not "
            f"comparable with FIDs from more images (use more than {dim} images on each side)")


@dataclass(frozen=True)
class MetricInputs:
    """What a metric function reads: the samples' features (layer -> ``float [N, D]``), the reference statistics
    (None when no metric asked needs them), the layer this metric reads, the settings and torch-fidelity's
    keyword arguments built from them."""

    samples: Mapping[str, torch.Tensor]
    reference: ReferenceStats | None
    layer: str
    settings: MetricSettings
    kwargs: Mapping[str, Any]
    verbose: bool


#: ``(inputs) -> (values keyed as the registry's Value.key, extra record fields)``
Compute = Callable[[MetricInputs], tuple[Mapping[str, Any], Mapping[str, Any]]]
#: ``(options) -> (least number of images, what needs them)`` for ``settings_problem``
Minimum = Callable[[Mapping[str, Any]], tuple[int, str]]


@dataclass(frozen=True)
class MetricFunction:
    """The code of one selectable registry metric: how to compute it and how many images it needs."""

    compute: Compute
    minimum: Minimum


#: selectable metric name -> its function (registered with :func:`metric_function`, one per registry entry)
FUNCTIONS: dict[str, MetricFunction] = {}


def metric_function(name: str, minimum: Minimum) -> Callable[[Compute], Compute]:
    """Register the function that computes the selectable registry metric ``name`` (a decorator).

    A new metric is its :class:`~dtr_plugins.core.metrics.Metric` entry plus one function registered here;
    ``tests/unit/test_metric_registry.py`` checks that every selectable entry has one."""
    if name not in REGISTRY or not REGISTRY[name].selectable:
        raise ValueError(f"metric_function: {name!r} is not a selectable metric of dtr_plugins.core.metrics.REGISTRY")

    def register(fn: Compute) -> Compute:
        FUNCTIONS[name] = MetricFunction(fn, minimum)
        return fn
    return register


def _kid_minimum(options: Mapping[str, Any]) -> tuple[int, str]:
    subset = options.get("kid_subset_size")
    return (int(subset), f"kid with kid_subset_size={subset}") if subset else (2, "kid (at least 2 images)")


def _prc_minimum(options: Mapping[str, Any]) -> tuple[int, str]:
    k = int(options.get("prc_neighborhood") or PRC_NEIGHBORHOOD)
    return k + 1, f"prc (precision/recall with prc_neighborhood={k} needs k + 1 = {k + 1} images)"


def _isc_minimum(options: Mapping[str, Any]) -> tuple[int, str]:
    splits = options.get("isc_splits")
    if not splits:
        return 1, "isc"
    return 2 * int(splits), (f"isc with isc_splits={splits} (a split of one image always scores 1, so each split "
                             "needs at least 2)")


def _reference(inputs: MetricInputs, metric: str) -> ReferenceStats:
    if inputs.reference is None:
        raise EvalError(f"{metric}: needs reference statistics (only isc runs without a reference)")
    return inputs.reference


def _frechet(inputs: MetricInputs, metric: str) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """``(distance, samples' statistics, reference statistics, feature dim)`` of the Fréchet distance on
    ``inputs.layer``: torch-fidelity's ``fid_statistics_to_metric`` (``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))``,
    Heusel et al. 2017), round-off below 0 reported as 0 (:func:`_never_negative`)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    reference = _reference(inputs, metric)
    mine, theirs = fid_statistics(inputs.samples[inputs.layer]), reference.fid[inputs.layer]
    theirs = {k: np.asarray(v, dtype=mine[k].dtype) for k, v in theirs.items()}  # a statistics file's own dtype
    if theirs["mu"].shape != mine["mu"].shape:
        raise EvalError(f"{metric}: the reference statistics are {len(theirs['mu'])}-dimensional, the samples' "
                        f"features {len(mine['mu'])}-dimensional (layer {inputs.layer}); use statistics of the same "
                        "feature extractor")
    out = fid_statistics_to_metric(mine, theirs, inputs.verbose)
    return _never_negative(out["frechet_inception_distance"], mine, theirs), mine, theirs, len(theirs["mu"])


@metric_function("fid", lambda options: (2, "fid (a covariance needs at least 2 images)"))
def _fid(inputs: MetricInputs) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    value, _, _, dim = _frechet(inputs, "fid")
    feats, reference = inputs.samples[inputs.layer], _reference(inputs, "fid")
    # a statistics file does not say how many images it came from (0): only the samples' side is checked
    problem = fid_rank_deficiency(len(feats), reference.num_images or len(feats), dim)
    if problem:
        warnings.warn(problem, stacklevel=4)
    return {"frechet_inception_distance": value}, {"fid_rank_deficient": problem is not None, "fid_feature_dim": dim}


@metric_function("sfid", lambda options: (2, "sfid (a covariance needs at least 2 images)"))
def _sfid(inputs: MetricInputs) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """sFID (Nash et al. 2021) as ADM's evaluator computes it: the Fréchet distance on the first 7 channels of
    Inception's ``mixed_6/conv`` (17 x 17 x 7 = 2023 values per image; the extractor's ``sfid`` layer)."""
    value, _, _, dim = _frechet(inputs, "sfid")
    feats, reference = inputs.samples[inputs.layer], _reference(inputs, "sfid")
    problem = fid_rank_deficiency(len(feats), reference.num_images or len(feats), dim)
    if problem:
        warnings.warn("s" + problem, stacklevel=4)
    return {"sfid": value}, {"sfid_rank_deficient": problem is not None, "sfid_feature_dim": dim}


@metric_function("isc", _isc_minimum)
def _isc(inputs: MetricInputs) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric

    samples, layer, splits = inputs.samples, inputs.layer, inputs.settings.isc_splits
    out = isc_featuresdict_to_metric(dict(samples), layer, **inputs.kwargs)
    per_split = len(samples[layer]) // splits
    if splits == 1 and per_split >= ISC_MIN_PER_SPLIT:
        warnings.warn("Inception Score in one split (isc_splits=1): its std is 0 by construction, not a "
                      "measured spread", stacklevel=4)
    if per_split < ISC_MIN_PER_SPLIT:
        warnings.warn(f"Inception Score from {len(samples[layer])} samples in {splits} split(s) of {per_split} "
                      f"image(s): with fewer than {ISC_MIN_PER_SPLIT} images a split the score is biased low"
                      + (" and its std over one split is 0" if splits == 1 else ""), stacklevel=4)
    return out, {"isc_images_per_split": per_split}


@metric_function("kid", _kid_minimum)
def _kid(inputs: MetricInputs) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    from torch_fidelity.metric_kid import kid_features_to_metric

    reference, feats = _reference(inputs, "kid"), inputs.samples[inputs.layer]
    theirs = reference.features[inputs.layer]
    out = kid_features_to_metric(feats, theirs, **inputs.kwargs)
    return out, {"kid_whole_sets": _kid_whole_sets(len(feats), len(theirs), inputs.settings)}


@metric_function("prc", _prc_minimum)
def _prc(inputs: MetricInputs) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    from torch_fidelity.metric_prc import prc_features_to_metric

    reference, feats = _reference(inputs, "prc"), inputs.samples[inputs.layer]
    theirs = reference.features[inputs.layer]
    out = prc_features_to_metric(feats, theirs, **inputs.kwargs)
    return out, {"prc_whole_set": _prc_whole_set(len(feats), len(theirs), inputs.settings.prc_neighborhood)}


def compute_metrics(metrics: Sequence[str], samples: dict[str, torch.Tensor], reference: ReferenceStats | None,
                    layers: Mapping[str, str], settings: MetricSettings, *, verbose: bool = False,
                    save_cpu_ram: bool = True) -> dict[str, Any]:
    """The metric values: each metric's registered values in registry order, then the extra record fields its
    function returns (``fid_rank_deficient`` and ``fid_feature_dim`` with FID, ...).

    ``samples``: layer -> ``float [N, D]`` features of the samples; ``reference``: the reference statistics
    (``None`` when only ``isc`` is asked); ``layers``: metric -> layer. Raises :class:`EvalError` when a metric
    needs reference statistics that are not given, or torch-fidelity refuses the inputs.
    """
    kwargs = settings.fidelity_kwargs(verbose, save_cpu_ram)
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    try:
        for metric in metrics:
            values, fields = FUNCTIONS[metric].compute(
                MetricInputs(samples, reference, layers[metric], settings, kwargs, verbose))
            out.update(values)
            extra.update(fields)
    except ValueError as exc:  # torch-fidelity's vassert
        raise EvalError(f"torch-fidelity: {str(exc).strip().splitlines()[-1]}") from exc
    ordered = {v.key: float(out[v.key]) for m in metrics for v in REGISTRY[m].values if v.key in out}
    ordered.update(extra)
    return ordered


def _kid_whole_sets(num_samples: int, num_reference: int, settings: MetricSettings) -> list[str]:
    """The sides (``samples``, ``reference``) that every KID subset holds whole (subset size >= that side's
    count; one side: the std measures the other side's spread only). With both, all subsets are the same and the
    std is 0 by construction: a warning."""
    size = settings.kid_subset_size
    whole = [side for side, n in (("samples", num_samples), ("reference", num_reference)) if size >= n]
    if len(whole) == 2:
        warnings.warn(f"KID: kid_subset_size {size} holds all {num_samples} samples and all {num_reference} reference "
                      "images, so every subset is the same: the ± is 0 by construction, not a measured spread (give "
                      "more images than kid_subset_size on a side)", stacklevel=5)
    return whole


def _prc_whole_set(num_samples: int, num_reference: int, k: int) -> bool:
    """True (with a warning) when ``k`` neighbours are all the other images of a side: each radius is then the
    distance to its farthest point, the manifold estimate covers everything and precision/recall say little."""
    if k < min(num_samples, num_reference) - 1:
        return False
    smallest = min(num_samples, num_reference)
    warnings.warn(f"precision/recall: prc_neighborhood {k} reaches every other image of {smallest}, so each "
                  "neighbourhood is the whole set and the values say little (use more than k + 1 images)",
                  stacklevel=5)
    return True


def _never_negative(fid: float, mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> float:
    """``fid``, with round-off below 0 (within :data:`FID_NEGATIVE_TOLERANCE`) reported as 0."""
    if fid >= 0:
        return float(fid)
    scale = max(1.0, float(np.trace(mine["sigma"])) + float(np.trace(theirs["sigma"])))
    if -fid <= FID_NEGATIVE_TOLERANCE * scale:
        return 0.0
    raise EvalError(f"fid: the computation gave {fid:.3g} (negative beyond round-off); the feature covariances are "
                    "numerically unstable, use more images")


def class_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose predicted class equals the class they were generated for."""
    return float((np.asarray(predicted) == np.asarray(labels)).mean())
