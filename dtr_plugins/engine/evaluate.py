"""Score samples against a reference with torch-fidelity: FID, IS, KID, precision/recall.

Inputs
------
``samples``: a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``; not recursive), an
``.npz`` in the ADM evaluator layout (``arr_0``: ``uint8`` NHWC; an optional ``labels`` array gives the class
each sample was generated for), or a ``uint8`` NHWC array.

``reference``: a folder, an ``.npz``, or a dataset plugin written ``dataset:NAME`` with optional parameters as
a query string, ``dataset:NAME?key=value&key=value`` (values are read as YAML scalars, so ``8`` is a number and
``true`` a boolean, except for string-typed parameters; ``%``-escapes work as in URLs)::

    dataset:digits                       all 1,797 digits
    dataset:digits?split=b&image_size=16
    dataset:image_folder?path=/data/ffhq&image_size=256&class_cond=false

For a dataset whose parameters include ``image_size``, an unset ``image_size`` defaults to the samples' size;
``random_flip`` defaults to off. Dataset images (floats in [-1, 1]) become ``uint8`` as ``round((x + 1) * 127.5)``.

Grayscale images are expanded to RGB. All images of one input must share one size; the two inputs may differ
(a warning says so): every extractor resizes its input to its own resolution, as torch-fidelity does
(Inception to 299x299, ``digits-classifier`` to 8x8).

Output
------
A dict: torch-fidelity's metric keys (``frechet_inception_distance``, ``inception_score_mean``/``_std``,
``kernel_inception_distance_mean``/``_std``, ``precision``, ``recall``, ``f_score``), ``class_accuracy`` when the
extractor is a classifier and the samples' labels are known, then ``feature_extractor``, ``weights_sha256``,
``num_samples``, ``num_reference``, ``image_size``, ``reference_image_size``, ``samples``, ``reference``,
``kid_subset_size`` (with KID) and ``reference_cache`` (``hit``, ``miss`` or ``off``).

Reference features and FID statistics are cached by torch-fidelity under ``<cache>/fidelity`` (``cache_dir``,
default ``$DTR_CACHE_DIR/fidelity`` or ``~/.cache/dtr_plugins/fidelity``) with a name built from the reference
(dataset name and every parameter, or a folder's / file's path, sizes and modification times), the extractor
and its weights' hash, so later runs against the same reference skip it entirely.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import typing
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dtr_plugins.core.errors import DataError, UserError
from dtr_plugins.core.images import to_uint8
from dtr_plugins.core.io import write_json
from dtr_plugins.engine.feature_extractors import EvalError, FeatureExtractorSpec, cache_root, file_sha256

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

#: our metric name -> torch-fidelity's flag and the keys it returns
METRICS: dict[str, tuple[str, ...]] = {
    "fid": ("frechet_inception_distance",),
    "isc": ("inception_score_mean", "inception_score_std"),
    "kid": ("kernel_inception_distance_mean", "kernel_inception_distance_std"),
    "prc": ("precision", "recall", "f_score"),
}
DATASET_PREFIX = "dataset:"
KID_SUBSET_SIZE = 1000
PRC_NEIGHBORHOOD = 3
_IN_MEMORY_LIMIT = 1 << 28  # dataset references up to 256 MiB of uint8 pixels are materialized

__all__ = ["evaluate", "evaluate_model_samples", "dataset_reference", "parse_dataset_reference", "load_images",
           "EvalError", "METRICS"]


# --------------------------------------------------------------------------------------------------
# image sets


class ArrayImages(Dataset):
    """``uint8`` NHWC images in memory, served as ``uint8`` RGB ``[3, H, W]`` tensors (torch-fidelity's input)."""

    def __init__(self, images: torch.Tensor):
        self.images = images  # [N, H, W, C], C in (1, 3)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index].permute(2, 0, 1)
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image.contiguous()


class FolderImages(Dataset):
    """Image files decoded on access, as ``uint8`` RGB ``[3, H, W]`` tensors; all must be ``size`` (H, W)."""

    def __init__(self, files: list[Path], size: tuple[int, int]):
        self.files = files
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot read image: {exc}") from None
        if arr.shape[:2] != self.size:
            raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, the others {self.size[1]}x{self.size[0]}")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class DatasetImages(Dataset):
    """A dataset plugin's ``(image in [-1, 1], label)`` items as ``uint8`` RGB ``[3, H, W]`` tensors."""

    def __init__(self, dataset: Dataset, where: str):
        self.dataset = dataset
        self.where = where

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.dataset[index]
        image = item[0] if isinstance(item, (tuple, list)) else item
        if not torch.is_tensor(image) or image.dim() != 3 or image.shape[0] not in (1, 3):
            shape = list(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise EvalError(f"{self.where}: items must be images [1 or 3, H, W] in [-1, 1], got {shape}")
        return to_uint8(image).expand(3, -1, -1).contiguous()


class _Lazy(Dataset):
    """A dataset built on first access: a reference found in the cache is never loaded."""

    def __init__(self, build: Callable[[], "ImageSet"]):
        self._build = build
        self.loaded: ImageSet | None = None

    def get(self) -> "ImageSet":
        if self.loaded is None:
            self.loaded = self._build()
        return self.loaded

    def __len__(self) -> int:
        return len(self.get().dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.get().dataset[index]


@dataclass
class ImageSet:
    dataset: Dataset  # uint8 RGB [3, H, W] items
    size: tuple[int, int]  # (H, W)
    labels: np.ndarray | None = None
    in_memory: bool = True
    source: str = "<array>"

    def __len__(self) -> int:
        return len(self.dataset)


def _array_images(arr: Any, where: str, labels: Any = None) -> ImageSet:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 (NHWC, ADM layout), got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        hint = " (channels first? expected NHWC)" if arr.ndim == 4 and arr.shape[1] in (1, 3) else ""
        raise DataError(f"{where}: images must be NHWC with 1 or 3 channels, got shape {list(arr.shape)}{hint}")
    if len(arr) == 0:
        raise DataError(f"{where}: no images")
    return ImageSet(ArrayImages(torch.from_numpy(np.ascontiguousarray(arr))), (arr.shape[1], arr.shape[2]),
                    _check_labels(labels, len(arr), where), True, where)


def _check_labels(labels: Any, n: int, where: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be {n} integers, got {labels.dtype} array of shape {list(labels.shape)}")
    return labels.astype(np.int64)


def _npz_images(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            key = "arr_0" if "arr_0" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(f"{path}: no arr_0 array (keys: {', '.join(keys) or 'none'})")
            images = data[key]
            labels = data["labels"] if "labels" in keys else None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - not a zip, truncated, object arrays...
        raise DataError(f"{path}: cannot read .npz: {_one_line(exc)}") from None
    return _array_images(images, str(path), labels)


def _folder_images(path: Path) -> ImageSet:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    size = None
    for f in files:  # headers only: a broken file fails here, before any feature is computed
        try:
            with Image.open(f) as img:
                w, h = img.size
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{f}: cannot read image: {exc}") from None
        if size is None:
            size, first = (h, w), f
        elif (h, w) != size:
            raise DataError(f"{f}: image is {w}x{h} but {first.name} is {size[1]}x{size[0]}; all images of one "
                            f"input must share a size (for a folder of real images of any size, use "
                            f"dataset:image_folder?path=...&image_size=N&class_cond=false)")
    return ImageSet(FolderImages(files, size), size, None, False, str(path))


def load_images(source: Any, labels: Any = None) -> ImageSet:
    """Samples as an :class:`ImageSet`: a folder, an ``.npz`` or a ``uint8`` NHWC array (with optional labels)."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        arr = source.cpu().numpy() if torch.is_tensor(source) else source
        return _array_images(arr, "<array>", labels)
    path = Path(source)
    if path.is_dir():
        images = _folder_images(path)
    elif path.is_file() and path.suffix.lower() == ".npz":
        images = _npz_images(path)
    elif path.exists():
        raise DataError(f"{path}: expected a folder of images or an .npz file")
    else:
        raise DataError(f"{path}: no such file or folder")
    if labels is not None:
        images.labels = _check_labels(labels, len(images), str(path))
    return images


# --------------------------------------------------------------------------------------------------
# references


def dataset_reference(name: str, **params: Any) -> str:
    """The reference string for a dataset plugin, e.g. ``dataset_reference("digits", split="b")``
    -> ``"dataset:digits?split=b"`` (``random_flip`` is dropped: references are not augmented)."""
    params.pop("random_flip", None)
    items = []
    for key, value in params.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        items.append((key, text))
    query = urllib.parse.urlencode(items)
    return f"{DATASET_PREFIX}{name}" + (f"?{query}" if query else "")


def parse_dataset_reference(spec: str, registry=None) -> tuple[str, dict[str, Any]]:
    """``dataset:NAME?k=v&k=v`` -> (NAME, params); values are YAML scalars unless the parameter is a string."""
    import yaml

    body = spec[len(DATASET_PREFIX):]
    name, _, query = body.partition("?")
    name = urllib.parse.unquote(name.strip())
    if not name:
        raise EvalError(f"reference {spec!r}: no dataset name (write dataset:NAME?key=value&...)")
    info = _registry(registry).get("dataset", name)
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


def _registry(registry):
    if registry is not None:
        return registry
    from dtr_plugins.core.plugins import default_registry

    return default_registry()


def _fingerprint_path(path: Path) -> dict[str, Any]:
    """What identifies a folder's or file's content cheaply: path, names, sizes, modification times."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        digest = hashlib.sha256()
        for f in files:
            st = f.stat()
            digest.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"folder": str(path.resolve()), "files": len(files), "listing": digest.hexdigest()}
    st = path.stat()
    return {"file": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class Reference:
    """A reference input: how to load it, and the description its cache entry is keyed by."""

    label: str  # as the user wrote it (or resolved for datasets)
    key: dict[str, Any]
    slug: str
    load: Callable[[], ImageSet]


def resolve_reference(reference: Any, sample_size: tuple[int, int], registry=None) -> Reference:
    if isinstance(reference, (np.ndarray, torch.Tensor)):
        arr = reference.cpu().numpy() if torch.is_tensor(reference) else np.asarray(reference)
        return Reference("<array>", {"array_sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
                                     "shape": list(arr.shape)}, "array", lambda: _array_images(arr, "reference"))
    spec = str(reference)
    if spec.startswith(DATASET_PREFIX):
        name, params = parse_dataset_reference(spec, registry)
        info = _registry(registry).get("dataset", name)
        fields = info.params.model_fields
        if "image_size" in fields and "image_size" not in params and sample_size[0] == sample_size[1]:
            params["image_size"] = sample_size[0]
        if "random_flip" in fields and "random_flip" not in params:
            params["random_flip"] = False
        validated = info.validate(params, where=f"reference dataset:{name}").model_dump(mode="json")
        label = dataset_reference(name, **validated)
        if validated.get("random_flip"):
            label += "&random_flip=true"
        key = {"dataset": name, "params": validated, "distribution": info.distribution, "version": info.version}

        def load() -> ImageSet:
            dataset = info.factory(**validated)
            images = DatasetImages(dataset, f"reference {label}")
            if len(images) == 0:
                raise DataError(f"reference {label}: the dataset is empty")
            first = images[0]
            size = (first.shape[1], first.shape[2])
            if len(images) * first.numel() <= _IN_MEMORY_LIMIT:  # small: materialize once (fast, no workers)
                stack = torch.stack([images[i] for i in range(len(images))])
                if stack.shape[2:] != first.shape[1:]:
                    raise DataError(f"reference {label}: images differ in size")
                return ImageSet(ArrayImages(stack.permute(0, 2, 3, 1)), size, None, True, label)
            return ImageSet(images, size, None, False, label)

        slug = name + "".join(f"-{k}{v}" for k, v in validated.items() if k in ("split", "image_size"))
        return Reference(label, key, slug, load)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"reference {spec}: no such file or folder (or write dataset:NAME for a dataset plugin)")
    if not (path.is_dir() or path.suffix.lower() == ".npz"):
        raise DataError(f"reference {spec}: expected a folder of images, an .npz file or dataset:NAME")
    return Reference(spec, _fingerprint_path(path), path.stem or "ref", lambda: load_images(path))


# --------------------------------------------------------------------------------------------------
# evaluation


def _device(device: Any) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device {device}: CUDA is not available")
    if device.type not in ("cuda", "cpu"):
        raise EvalError(f"device {device}: only cpu and cuda are supported for evaluation")
    return device


@contextlib.contextmanager
def _exact_float32():
    """Plain float32 matmuls and convolutions (no TF32) while features are extracted, then the caller's settings."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _one_line(exc: BaseException) -> str:
    """The message of an error raised inside a DataLoader worker: drop the wrapper's traceback."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last) if len(lines) > 1 else last


def _ensure_registered(spec: FeatureExtractorSpec) -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if spec.name not in FEATURE_EXTRACTORS_REGISTRY:
        if spec.fidelity_class is None:
            raise EvalError(f"feature extractor {spec.name!r} is not known to torch-fidelity and its plugin "
                            f"gives no fidelity_class to register")
        register_feature_extractor(spec.name, spec.fidelity_class)


def _feature_layer(spec: FeatureExtractorSpec, metric: str) -> str:
    """The spec's layer for ``metric``, else the torch-fidelity extractor's default one."""
    if spec.layers.get(metric):
        return spec.layers[metric]
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    return FEATURE_EXTRACTORS_REGISTRY[spec.name].get_default_feature_layer_for_metric(metric)


def _class_accuracy(spec: FeatureExtractorSpec, images: ImageSet, device: torch.device, batch_size: int,
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
    classify = spec.classifier(device)
    loader = torch.utils.data.DataLoader(images.dataset, batch_size=batch_size, shuffle=False)
    preds = []
    with torch.no_grad():
        for batch in loader:
            preds.append(classify(batch.to(device)).argmax(dim=1).cpu())
    return float((torch.cat(preds).numpy() == labels).mean())


def evaluate(samples: Any, reference: Any, metrics: Sequence[str] = ("fid",),
             feature_extractor: str = "inception-v3-compat", weights_path: str | os.PathLike | None = None,
             num_classes: int | None = None, labels: Any = None, cache_dir: str | os.PathLike | None = None,
             batch_size: int = 64, device: Any = None, *, cache: bool = True, verbose: bool | None = None,
             out: str | os.PathLike | None = None, fidelity_options: dict[str, Any] | None = None,
             registry=None) -> dict[str, Any]:
    """Score ``samples`` against ``reference`` with torch-fidelity (see the module docstring for the inputs).

    ``metrics``: any of ``fid``, ``isc``, ``kid``, ``prc``. ``feature_extractor``: a registered feature-extractor
    plugin (``inception-v3-compat``, ``digits-classifier``). ``weights_path``: the extractor's local weights file.
    ``labels``: the class of each sample (overrides an npz's ``labels``); ``num_classes``: the model's class count,
    checked against the extractor's before ``class_accuracy``. ``cache_dir``: where reference statistics are
    cached; ``cache=False`` disables it. ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda if present).
    ``verbose``: torch-fidelity's progress on stderr (default: when stderr is a terminal). ``out``: also write
    the result there as JSON (atomically). ``fidelity_options``: extra keyword arguments for torch-fidelity's
    ``calculate_metrics`` (``kid_subsets``, ``rng_seed``, ``isc_splits``...). Bad input raises a
    :class:`UserError` subclass with a one-line message.
    """
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if not metrics or unknown:
        raise EvalError(f"metrics: unknown {', '.join(map(repr, unknown))} (allowed: {', '.join(METRICS)})"
                        if unknown else f"metrics: none given (allowed: {', '.join(METRICS)})")
    if batch_size < 1:
        raise EvalError(f"batch_size: must be at least 1, got {batch_size}")
    dev = _device(device)
    verbose = sys.stderr.isatty() if verbose is None else bool(verbose)

    images = load_images(samples, labels)
    minimum = PRC_NEIGHBORHOOD + 2 if "prc" in metrics else 2
    if len(images) < minimum:
        raise DataError(f"{images.source}: {len(images)} image(s); these metrics need at least {minimum}")
    binary = any(m in metrics for m in ("fid", "kid", "prc"))
    ref = resolve_reference(reference, images.size, registry)

    registry = _registry(registry)
    params = {"weights_path": str(weights_path)} if weights_path else {}
    spec: FeatureExtractorSpec = registry.build("feature_extractor", feature_extractor, **params)
    weights_sha = file_sha256(spec.weights_path) if spec.weights_path else None
    _ensure_registered(spec)
    layer = {m: _feature_layer(spec, m) for m in METRICS}

    # reference cache: name keyed by the reference, the extractor and its weights
    fidelity_cache = Path(cache_dir).expanduser() if cache_dir else cache_root() / "fidelity"
    key = json.dumps({"reference": ref.key, "extractor": spec.name, "weights": weights_sha}, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", ref.slug)[:60]
    cache_name = f"dtr-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    layers = sorted({layer[m] for m in metrics})
    only_fid = metrics == ["fid"]
    expected = ([f"{cache_name}-{spec.name}-stat-fid-{layer['fid']}.pt"] if only_fid else
                [f"{cache_name}-{spec.name}-features-{layer}.pt" for layer in layers])
    meta_path = fidelity_cache / f"{cache_name}.json"
    meta = None
    if cache and meta_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(meta_path.read_text())
    hit = cache and binary and meta is not None and all((fidelity_cache / f).is_file() for f in expected)
    lazy_ref = _Lazy(ref.load)
    if hit:  # never loaded: torch-fidelity finds everything it needs in the cache
        ref_count, ref_size = int(meta["num_reference"]), tuple(meta["image_size"])
    else:  # load (and check) the reference before any feature is computed
        loaded = lazy_ref.get()
        ref_count, ref_size = len(loaded), loaded.size
    if binary and ref_count < minimum:
        raise DataError(f"reference {ref.label}: {ref_count} image(s); these metrics need at least {minimum}")
    if tuple(ref_size) != tuple(images.size):
        warnings.warn(f"samples are {images.size[1]}x{images.size[0]}, the reference {ref_size[1]}x{ref_size[0]}; "
                      f"{spec.name} resizes both to its input size", stacklevel=2)

    kid_subset = min(KID_SUBSET_SIZE, len(images), ref_count)
    in_memory = images.in_memory and (lazy_ref.loaded is None or lazy_ref.loaded.in_memory)
    largest = max(len(images), ref_count)
    # save_cpu_ram: no DataLoader workers (arrays need none, and for a few thousand files their start-up costs
    # more than it saves) and precision/recall in blocks (full distance matrices of > 20k images are too big)
    save_cpu_ram = in_memory or largest <= 10000 or largest > 20000
    kwargs = dict(
        input1=images.dataset, input2=lazy_ref if binary else None,
        fid="fid" in metrics, isc="isc" in metrics, kid="kid" in metrics, prc="prc" in metrics,
        feature_extractor=spec.name,
        feature_extractor_weights_path=str(spec.weights_path) if spec.weights_path else None,
        feature_layer_fid=layer["fid"], feature_layer_kid=layer["kid"],
        feature_layer_prc=layer["prc"], feature_layer_isc=layer["isc"],
        batch_size=batch_size, cuda=dev.type == "cuda", verbose=verbose,
        kid_subset_size=kid_subset, isc_splits=min(10, len(images)), prc_neighborhood=PRC_NEIGHBORHOOD,
        cache=cache, cache_root=str(fidelity_cache), input2_cache_name=cache_name if (cache and binary) else None,
        save_cpu_ram=save_cpu_ram,
    )
    kwargs.update(fidelity_options or {})

    import torch_fidelity

    cuda_ctx = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    try:
        with cuda_ctx, _exact_float32():
            result = torch_fidelity.calculate_metrics(**kwargs)
            accuracy = _class_accuracy(spec, images, dev, batch_size, num_classes)
    except UserError as exc:
        raise type(exc)(_one_line(exc)) from exc
    except ValueError as exc:  # torch-fidelity's own checks (vassert)
        raise EvalError(f"torch-fidelity: {_one_line(exc)}") from exc

    if cache and binary and lazy_ref.loaded is not None:
        fidelity_cache.mkdir(parents=True, exist_ok=True)
        write_json(meta_path, {"reference": ref.label, "key": ref.key, "feature_extractor": spec.name,
                               "weights_sha256": weights_sha, "num_reference": ref_count,
                               "image_size": list(ref_size)})

    ordered = {k: float(result[k]) for m in metrics for k in METRICS[m] if k in result}
    ordered.update({k: v for k, v in result.items() if k not in ordered})
    if accuracy is not None:
        ordered["class_accuracy"] = accuracy
    ordered.update({
        "feature_extractor": spec.name,
        "weights_sha256": weights_sha,
        "num_samples": len(images),
        "num_reference": ref_count,
        "image_size": list(images.size),
        "reference_image_size": list(ref_size),
        "samples": images.source,
        "reference": ref.label,
    })
    if "kid" in metrics:
        ordered["kid_subset_size"] = kid_subset
    ordered["reference_cache"] = ("hit" if hit else "miss") if (cache and binary) else "off"
    if out is not None:
        write_json(out, ordered)
    return ordered


def evaluate_model_samples(images_uint8_nhwc: np.ndarray, labels: np.ndarray | None, reference: str,
                           metrics: Sequence[str] = ("fid",), feature_extractor: str = "inception-v3-compat",
                           weights_path: str | os.PathLike | None = None, **kwargs: Any) -> dict[str, Any]:
    """Evaluate in-memory samples (``uint8`` NHWC, e.g. from the trainer's EMA model) against ``reference``.

    ``labels``: the class each sample was generated for (``None`` for unconditional models). Other keyword
    arguments go to :func:`evaluate` (``num_classes``, ``device``, ``batch_size``, ``cache_dir``, ...).
    """
    return evaluate(images_uint8_nhwc, reference, metrics=metrics, feature_extractor=feature_extractor,
                    weights_path=weights_path, labels=labels, **kwargs)
