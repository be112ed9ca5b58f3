"""The one metric registry: every metric's name, the values it records, their titles and directions.

Everything that names metrics derives from :data:`REGISTRY`: the choices of ``dtr eval --metrics``, the
allowed values of ``eval.metrics`` in a config, the columns of the suite report and of ``dtr runs``, the
paired comparisons (which direction is better) and the rows of a model card. A new metric is one
:class:`Metric` entry here plus the function that computes it (see docs/evaluation.md).

- a *selectable* metric (``fid``, ``sfid``, ``isc``, ``kid``, ``prc``) is what ``eval.metrics`` names; it records
  one or more values (``fid`` -> ``frechet_inception_distance``); ``fid`` is the Fréchet distance on the
  feature extractor's pooled features (with ``feature_extractor: dinov2`` it is FD-DINOv2, Stein et al. 2023),
  ``sfid`` the one on Inception's spatial features (Nash et al. 2021, as ADM's evaluator computes it);
- other entries record values that are not asked for by name: ``class_accuracy`` (when the feature extractor
  classifies), a text-to-image run's ``clip_score`` (``text.clip_score_model``) and ``prompt_class_agreement``
  (offline caption sets: the classifier's class against the prompt's), the held-out loss (``heldout/total``, per
  band ``heldout/band<k>``) and the training loss.

A value with no ``direction`` (a standard deviation, the F-score) is shown on model cards but neither
compared nor tabled in reports.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LOWER", "HIGHER", "Value", "Metric", "REGISTRY", "selectable", "needs_reference", "frechet", "values",
           "value_of", "compared", "card_titles"]

LOWER, HIGHER = "lower", "higher"


@dataclass(frozen=True)
class Value:
    """One number a metric records: its key in eval records / ``eval.json``, a short title (report tables,
    ``dtr runs``), the title on model cards, and which direction is better (None: not compared)."""

    key: str
    title: str
    direction: str | None = None
    card_title: str | None = None  # None: ``title``

    @property
    def card(self) -> str:
        return self.card_title or self.title


@dataclass(frozen=True)
class Metric:
    """A metric: ``name`` (what ``eval.metrics`` and ``--metrics`` say), the values it records, whether it
    compares samples against reference images, the extractor layer kind it reads (``features``: the pooled
    feature layer, ``logits``: the class logits; None: no extractor), and whether a config selects it."""

    name: str
    values: tuple[Value, ...]
    needs_reference: bool = False
    feature_layer: str | None = "features"
    selectable: bool = True
    #: the reference is read as a mean and covariance of its features (a Fréchet distance: fid, sfid)
    frechet: bool = False


#: name -> metric, in the order reports list them
REGISTRY: dict[str, Metric] = {m.name: m for m in (
    Metric("heldout", (Value("heldout/total", "held-out loss", LOWER),), feature_layer=None, selectable=False),
    Metric("fid", (Value("frechet_inception_distance", "FID", LOWER),), needs_reference=True, frechet=True),
    Metric("sfid", (Value("sfid", "sFID", LOWER, "sFID (spatial Inception features)"),), needs_reference=True,
           feature_layer="spatial", frechet=True),
    Metric("kid", (Value("kernel_inception_distance_mean", "KID", LOWER, "KID (mean)"),
                   Value("kernel_inception_distance_std", "KID std", None, "KID (std)")), needs_reference=True),
    Metric("isc", (Value("inception_score_mean", "IS", HIGHER, "Inception score (mean)"),
                   Value("inception_score_std", "IS std", None, "Inception score (std)")), feature_layer="logits"),
    Metric("prc", (Value("precision", "precision", HIGHER), Value("recall", "recall", HIGHER),
                   Value("f_score", "F-score")), needs_reference=True),
    Metric("class_accuracy", (Value("class_accuracy", "class accuracy", HIGHER),), feature_layer="logits",
           selectable=False),
    Metric("train_loss", (Value("train_loss", "training loss", LOWER),), feature_layer=None, selectable=False),
    # text-to-image runs (docs/text_to_image.md): recorded when their evaluation can compute them
    Metric("clip_score", (Value("clip_score", "CLIP score", HIGHER),), feature_layer=None, selectable=False),
    Metric("prompt_class_agreement", (Value("prompt_class_agreement", "prompt-class agreement", HIGHER),),
           feature_layer="logits", selectable=False),
)}

_BAND = "heldout/band"


def selectable() -> tuple[str, ...]:
    """The metric names a config (``eval.metrics``) and ``dtr eval --metrics`` may name."""
    return tuple(name for name, m in REGISTRY.items() if m.selectable)


def needs_reference() -> tuple[str, ...]:
    """The selectable metrics that compare samples against reference images."""
    return tuple(name for name, m in REGISTRY.items() if m.selectable and m.needs_reference)


def frechet() -> tuple[str, ...]:
    """The selectable metrics whose reference is a mean and covariance of features (fid, sfid)."""
    return tuple(name for name, m in REGISTRY.items() if m.selectable and m.frechet)


def values() -> list[Value]:
    """Every registered value, in registry order."""
    return [v for m in REGISTRY.values() for v in m.values]


def value_of(key: str) -> Value | None:
    """The registered value of ``key``; held-out bands ``heldout/band<k>`` are derived; None if unknown."""
    for value in values():
        if value.key == key:
            return value
    if key.startswith(_BAND) and key[len(_BAND):].isdigit():
        return Value(key, f"held-out loss, band {key[len(_BAND):]}", LOWER)
    return None


def compared() -> dict[str, tuple[str, str]]:
    """``{key: (title, direction)}`` of every value with a direction (compared, tabled), in registry order."""
    return {v.key: (v.title, v.direction) for v in values() if v.direction is not None}


def card_titles() -> dict[str, str]:
    """``{key: model card title}`` of every value a metric records (in registry order)."""
    return {v.key: v.card for v in values()}
