"""Evaluation references: a folder, an ``.npz``, an array or a dataset plugin, and what identifies its content.

A dataset plugin is written ``dataset:NAME`` with optional parameters as a query string,
``dataset:NAME?key=value&key=value`` (values are read as YAML scalars, so ``8`` is a number and ``true`` a
boolean, except for string-typed parameters; ``%``-escapes work as in URLs)::

    dataset:digits                       all 1,797 digits
    dataset:digits?split=b&image_size=16
    dataset:image_folder?path=/data/ffhq&image_size=256&class_cond=false

A reference is never augmented (its params model's ``unaugmented()``, :class:`SupportsAugmentation`), and a
dataset whose params model can give another size (:class:`SupportsImageSize`) takes the samples' size when the
reference leaves it unset. Both capabilities are in ``dtr_plugins/core/contracts.py``.

Content identity (:attr:`Reference.key`): reference statistics are cached by what determines them, never by
a name or path alone.

- a folder: every image file under it (recursively) by relative path, size and modification time, and the
  version of the image decoder (:data:`dtr_plugins.core.decode.DECODER_VERSION`);
- an ``.npz``: its size and modification time; an array: the SHA-256 of its bytes and its shape;
- a dataset: its name, every validated parameter, the plugin's distribution and version, and, for each
  string parameter that names a data location (``path``, ``root``, or a name ending in ``_path``, ``_dir``
  or ``_root``) and exists, the fingerprint of that file or folder (every file under it, recursively), and
  the image decoder's version.
"""
from __future__ import annotations

import hashlib
import json
import os
import typing
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtr_plugins.core.contracts import SupportsAugmentation, SupportsImageShape, SupportsImageSize
from dtr_plugins.core.decode import DECODER_VERSION
from dtr_plugins.core.errors import DataError
from dtr_plugins.evaluation.inputs import (
    DatasetImages,
    ImageSet,
    array_images,
    load_images,
    materialize,
    npz_keys,
)
from dtr_plugins.extractors.builtin import EvalError

DATASET_PREFIX = "dataset:"
_LOCATION_NAMES = ("path", "root")
_LOCATION_SUFFIXES = ("_path", "_dir", "_root")


def dataset_reference(name: str, /, registry=None, **params: Any) -> str:
    """The reference string for a dataset plugin, e.g. ``dataset_reference("digits", split="b")``
    -> ``"dataset:digits?split=b"``. Parameters that the params model's ``unaugmented()`` changes are dropped
    (references are not augmented). Raises a config error when ``params`` do not validate."""
    model = default_registry(registry).get("dataset", name).validate(params, where=f"dataset '{name}'")
    given = model.model_dump(mode="json")
    if isinstance(model, SupportsAugmentation):
        plain = model.unaugmented().model_dump(mode="json")
        params = {k: v for k, v in params.items() if given.get(k) == plain.get(k)}
    items = []
    for key, value in params.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        items.append((key, text))
    query = urllib.parse.urlencode(items)
    return f"{DATASET_PREFIX}{name}" + (f"?{query}" if query else "")


def parse_dataset_reference(spec: str, registry=None) -> tuple[str, dict[str, Any]]:
    """``dataset:NAME?k=v&k=v`` -> (NAME, params); values are YAML scalars unless the parameter is a string.

    Raises :class:`EvalError` for bad syntax and :class:`~dtr_plugins.core.errors.PluginError` for an unknown
    dataset.
    """
    import yaml

    body = spec[len(DATASET_PREFIX):]
    name, _, query = body.partition("?")
    name = urllib.parse.unquote(name.strip())
    if not name:
        raise EvalError(f"reference {spec!r}: no dataset name (write dataset:NAME?key=value&...)")
    info = default_registry(registry).get("dataset", name)
    fields = info.params.model_fields
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise EvalError(f"reference {spec!r}: parameters must be written ?key=value&key=value") from None
    params: dict[str, Any] = {}
    for key, raw in pairs:
        if key in params:
            raise EvalError(f"reference {spec!r}: parameter {key!r} given twice")
        if key in fields and _wants_string(fields[key].annotation):
            params[key] = raw
            continue
        try:
            params[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            params[key] = raw
    return name, params


def _wants_string(annotation: Any) -> bool:
    """Whether a parameter takes strings (``str``, ``str | None``, a Literal of strings): keep its raw text."""
    if annotation is str:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return bool(args) and all(isinstance(a, str) for a in args)
    return any(_wants_string(a) for a in args if a is not type(None))


def default_registry(registry=None):
    """``registry``, else the default plugin registry (entry points)."""
    if registry is not None:
        return registry
    from dtr_plugins.core.plugins import default_registry as _default

    return _default()


def fingerprint_path(path: Path) -> dict[str, Any]:
    """What identifies a folder's or file's content cheaply: every file under a folder (recursively) by
    relative path, size and modification time in nanoseconds, hashed; a file by its size and modification time."""
    path = Path(path)
    if path.is_dir():
        digest = hashlib.sha256()
        count = 0
        for f in sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()):
            st = f.stat()
            digest.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            count += 1
        return {"folder": str(path.resolve()), "files": count, "listing_sha256": digest.hexdigest()}
    st = path.stat()
    return {"file": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_location(name: str) -> bool:
    return name in _LOCATION_NAMES or name.endswith(_LOCATION_SUFFIXES)


@dataclass
class Reference:
    """A resolved reference: ``label`` (as written, datasets normalized), ``key`` (its content identity, see
    the module docstring), ``slug`` (a short readable name for cache files) and ``load`` (builds the images)."""

    label: str
    key: dict[str, Any]
    slug: str
    load: Callable[[], ImageSet]
    #: an ``.npz`` of statistics alone (no ``arr_0``): ``statistics(metric)`` reads that Fréchet metric's mean and
    #: covariance (:data:`STATISTICS_KEYS`; U-ViT's ``fid_stats_*.npz``, ADM's statistics)
    statistics: Callable[[str], dict[str, np.ndarray]] | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of :attr:`key` (canonical JSON): the reference's content id in records."""
        return hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()


def resolve_reference(reference: Any, sample_size: tuple[int, int], registry=None) -> Reference:
    """A folder, ``.npz``, ``uint8`` NHWC array or ``dataset:NAME?...`` string as a :class:`Reference`.

    ``sample_size`` (H, W) sets a dataset's unset image size (:class:`SupportsImageSize`). Nothing is
    loaded here; bad references raise :class:`DataError`, :class:`EvalError` or a config/plugin error.
    """
    if isinstance(reference, (np.ndarray, torch.Tensor)):
        arr = reference.cpu().numpy() if torch.is_tensor(reference) else np.asarray(reference)
        key = {"array_sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
               "shape": list(arr.shape), "dtype": str(arr.dtype)}
        return Reference("<array>", key, "array", lambda: array_images(arr, "reference"))
    spec = str(reference)
    if spec.startswith(DATASET_PREFIX):
        return _dataset_reference(spec, sample_size, registry)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"reference {spec}: no such file or folder (or write dataset:NAME for a dataset plugin)")
    if not (path.is_dir() or path.suffix.lower() == ".npz"):
        raise DataError(f"reference {spec}: expected a folder of images, an .npz file or dataset:NAME")
    content: dict[str, Any] = dict(fingerprint_path(path))
    if path.is_dir():
        content["decoder"] = DECODER_VERSION
    elif _is_statistics_npz(path):
        return Reference(spec, content, path.stem or "ref", lambda: _no_images(spec),
                         lambda metric: read_fid_statistics(path, metric))
    return Reference(spec, content, path.stem or "ref", lambda: load_images(path))


def _is_statistics_npz(path: Path) -> bool:
    """Whether an ``.npz`` holds FID statistics (``mu``, ``sigma``) rather than images; reads its zip directory
    only, so a file that is no readable ``.npz`` raises :class:`DataError` here (and in ``dtr validate``)."""
    keys = npz_keys(path)
    return {"mu", "sigma"} <= set(keys) and "arr_0" not in keys


def _no_images(spec: str) -> ImageSet:
    raise EvalError(f"reference {spec}: holds statistics (mu, sigma) only; kid and prc need reference images")


#: the keys of a Fréchet metric's mean and covariance in a statistics ``.npz`` (ADM's evaluator: ``mu`` / ``sigma``
#: of Inception's pool features, ``mu_s`` / ``sigma_s`` of its spatial ones)
STATISTICS_KEYS = {"fid": ("mu", "sigma"), "sfid": ("mu_s", "sigma_s")}


def read_fid_statistics(path: Path, metric: str = "fid") -> dict[str, np.ndarray]:
    """``{"mu": [D], "sigma": [D, D]}`` (float64) of ``metric`` (:data:`STATISTICS_KEYS`) in a statistics ``.npz``;
    EvalError naming the file when it holds none for ``metric``, DataError when the shapes disagree or a value is
    not finite."""
    mu_key, sigma_key = STATISTICS_KEYS.get(metric, ("", ""))
    with np.load(path, allow_pickle=False) as data:
        if mu_key not in data.files or sigma_key not in data.files:
            raise EvalError(f"reference {path}: holds no {metric} statistics ({mu_key or '?'}, {sigma_key or '?'}; "
                            f"it has {', '.join(data.files)}); give reference images (arr_0) instead")
        mu, sigma = np.asarray(data[mu_key], np.float64), np.asarray(data[sigma_key], np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"reference {path}: FID statistics must be a finite mu [D] and sigma [D, D], got "
                        f"{list(mu.shape)} and {list(sigma.shape)}")
    return {"mu": mu, "sigma": sigma}


def _dataset_reference(spec: str, sample_size: tuple[int, int], registry) -> Reference:
    name, params = parse_dataset_reference(spec, registry)
    info = default_registry(registry).get("dataset", name)
    if isinstance(info.params, SupportsImageSize):
        params = info.params.with_image_size(params, *sample_size)
    model = info.validate(params, where=f"reference dataset:{name}")
    if isinstance(model, SupportsAugmentation):
        model = model.unaugmented()
    validated = model.model_dump(mode="json")
    label = dataset_reference(name, registry, **validated)
    locations = {k: fingerprint_path(Path(v).expanduser()) for k, v in validated.items()
                 if isinstance(v, str) and _is_location(k) and os.path.exists(Path(v).expanduser())}
    key = {"dataset": name, "params": validated, "distribution": info.distribution, "version": info.version,
           "data": locations, "decoder": DECODER_VERSION}

    def load() -> ImageSet:
        images = DatasetImages(info.factory(**validated), f"reference {label}")
        dataset, size, in_memory = materialize(images, label)
        return ImageSet(dataset, size, None, in_memory, label)

    slug = name + (f"-{model.image_shape()[1]}" if isinstance(model, SupportsImageShape) else "")
    return Reference(label, key, slug, load)


def check_config_reference(cfg: Any, registry=None, machine: bool = True) -> None:
    """``eval.reference`` of an :class:`~dtr_plugins.core.config.ExperimentConfig` (or the data's own reference)
    resolves, for ``dtr validate``: a dataset spec with valid parameters, or (``machine``) a folder / ``.npz``
    that exists. Nothing is loaded. Raises :class:`ConfigError` (one line naming ``eval.reference``)."""
    from dtr_plugins.core.errors import ConfigError, UserError
    from dtr_plugins.evaluation.metrics import BINARY_METRICS

    if not any(m in BINARY_METRICS for m in cfg.eval.metrics):
        return
    try:
        reference = cfg.eval.reference or dataset_reference(cfg.dataset.name, registry, **cfg.dataset.params)
        if not machine and not reference.startswith(DATASET_PREFIX):
            return
        data = default_registry(registry).get("dataset", cfg.dataset.name).validate(cfg.dataset.params, where="data")
        _, height, width = data.image_shape() if isinstance(data, SupportsImageShape) else (0, 0, 1)
        size = (height, width)
        resolve_reference(reference, size, registry)
    except UserError as exc:
        raise ConfigError(f"eval.reference: {exc}") from None
