"""Feature extraction for evaluation through torch-fidelity's feature extractors, without its cache.

torch-fidelity builds the extractor (``torch_fidelity.utils.create_feature_extractor``) and runs it over a
dataset (``torch_fidelity.utils.get_featuresdict_from_dataset``); nothing here reads or writes
torch-fidelity's cache (its cache files are pickles loaded with ``weights_only=False``). Reference features and
statistics are cached by :mod:`dtr_plugins.evaluation.stats_cache` in a format that cannot run code.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dtr_plugins.core.errors import UserError
from dtr_plugins.core.metrics import selectable
from dtr_plugins.evaluation.inputs import one_line
from dtr_plugins.extractors.builtin import EvalError, FeatureExtractorSpec

#: the metrics and the feature layer each one reads
METRIC_NAMES = selectable()


def device_of(device: Any) -> torch.device:
    """``None``/``"auto"`` -> cuda if present else cpu; ``cpu``, ``cuda`` or ``cuda:N`` otherwise (EvalError)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device {device}: CUDA is not available")
    if device.type not in ("cuda", "cpu"):
        raise EvalError(f"device {device}: only cpu and cuda are supported for evaluation")
    return device


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Plain float32 matmuls and convolutions (no TF32) while features are extracted, then the caller's settings."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def ensure_registered(spec: FeatureExtractorSpec) -> None:
    """Register the spec's ``fidelity_class`` with torch-fidelity under ``spec.name`` if it is not known yet, or in
    place of the known class when it subclasses it (it adds layers, e.g. the sFID layer of Inception)."""
    from torch_fidelity.registry import (
        FEATURE_EXTRACTORS_REGISTRY,
        register_feature_extractor,
    )

    known = FEATURE_EXTRACTORS_REGISTRY.get(spec.name)
    if known is None:
        if spec.fidelity_class is None:
            raise EvalError(f"feature extractor {spec.name!r} is not known to torch-fidelity and its plugin "
                            f"gives no fidelity_class to register")
        register_feature_extractor(spec.name, spec.fidelity_class)
    elif spec.fidelity_class not in (None, known) and issubclass(spec.fidelity_class, known):
        FEATURE_EXTRACTORS_REGISTRY[spec.name] = spec.fidelity_class  # an extension of torch-fidelity's own class


def feature_layers(spec: FeatureExtractorSpec) -> dict[str, str]:
    """The layer each metric reads: the spec's, else the torch-fidelity extractor's default for that metric; a
    metric with neither (``sfid`` on an extractor with no spatial layer) is left out (:func:`check_layers`)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    ensure_registered(spec)
    cls = FEATURE_EXTRACTORS_REGISTRY[spec.name]
    layers: dict[str, str] = {}
    for m in METRIC_NAMES:
        try:
            layers[m] = spec.layers.get(m) or cls.get_default_feature_layer_for_metric(m)
        except (KeyError, NotImplementedError):  # torch-fidelity's defaults cover fid, isc, kid, prc
            continue
    return layers


def check_layers(spec: FeatureExtractorSpec, metrics: Sequence[str], layers: Mapping[str, str]) -> None:
    """:class:`EvalError` (one line) when a metric asked has no layer on this extractor."""
    missing = [m for m in metrics if m not in layers]
    if missing:
        raise EvalError(f"metrics: {', '.join(missing)} need(s) a feature layer that feature extractor {spec.name!r} "
                        "does not provide (sfid: inception-v3-compat's spatial layer; isc: class logits)")


class Extractor:
    """One torch-fidelity feature extractor for ``layers``, built on first use on ``device``.

    ``options``: torch-fidelity keyword arguments for the extractor (``feature_extractor_internal_dtype``...).
    """

    def __init__(self, spec: FeatureExtractorSpec, layers: list[str], device: torch.device, batch_size: int,
                 verbose: bool, options: dict[str, Any] | None = None):
        self.spec, self.layers, self.device = spec, sorted(set(layers)), device
        self.batch_size, self.verbose = batch_size, verbose
        self.options = dict(options or {})
        self._module = None

    def _build(self):
        from torch_fidelity.utils import create_feature_extractor

        ensure_registered(self.spec)
        kwargs = {**self.options, "verbose": self.verbose, "feature_extractor_compile": False}
        if self.spec.weights_path:
            kwargs["feature_extractor_weights_path"] = str(self.spec.weights_path)
        return create_feature_extractor(self.spec.name, self.layers, cuda=self.device.type == "cuda", **kwargs)

    def __call__(self, dataset: Dataset, save_cpu_ram: bool) -> dict[str, torch.Tensor]:
        """Features of every item of ``dataset`` (``uint8 [3, H, W]``): ``{layer: float [N, D]}`` on the CPU.

        ``save_cpu_ram``: no DataLoader workers. An error raised while reading the data keeps its class and
        comes back as one line; torch-fidelity's own checks become :class:`EvalError`.
        """
        from torch_fidelity.utils import get_featuresdict_from_dataset

        cuda = self.device.type == "cuda"
        ctx = torch.cuda.device(self.device) if cuda else contextlib.nullcontext()
        try:
            with ctx, exact_float32():
                if self._module is None:
                    self._module = self._build()
                feats = get_featuresdict_from_dataset(dataset, self._module, self.batch_size, cuda, save_cpu_ram,
                                                      self.verbose)
        except UserError as exc:
            raise type(exc)(one_line(exc)) from exc
        except ValueError as exc:  # torch-fidelity's vassert
            raise EvalError(f"torch-fidelity: {one_line(exc)}") from exc
        return {layer: feats[layer] for layer in self.layers}


def predict_classes(spec: FeatureExtractorSpec, dataset: Dataset, device: torch.device,
                    batch_size: int) -> np.ndarray | None:
    """The extractor's predicted class (``int64 [N]``) for each ``uint8 [3, H, W]`` item, or ``None`` when the
    extractor is not a classifier (``spec.classifier is None``)."""
    if spec.classifier is None:
        return None
    classify = spec.classifier(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    preds = []
    with torch.no_grad(), exact_float32():
        for batch in loader:
            preds.append(classify(batch.to(device)).argmax(dim=1).cpu())
    return torch.cat(preds).numpy()
