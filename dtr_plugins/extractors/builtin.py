"""Feature-extractor plugins for evaluation: ``inception-v3-compat`` (standard FID) and ``digits-classifier``.

The factory contract
--------------------
A feature extractor is registered through ``dtr_register_feature_extractors(register)`` like any other
plugin. Its factory is called with its validated parameters (every built-in one takes ``weights_path``)
and returns a :class:`FeatureExtractorSpec`:

- ``name``: the extractor's name in torch-fidelity's registry (passed as ``feature_extractor``);
- ``layers``: the feature layer for each metric, keys ``fid``, ``kid``, ``prc`` and ``isc`` (a missing key
  means the torch-fidelity extractor's default layer for that metric);
- ``weights_path``: the local weights file the extractor loads (passed to torch-fidelity as
  ``feature_extractor_weights_path`` and hashed into ``eval.json``); the factory makes sure it exists, so
  nothing is downloaded while metrics are computed;
- ``fidelity_class``: a ``torch_fidelity.FeatureExtractorBase`` subclass that the evaluator registers with
  torch-fidelity under ``name`` if torch-fidelity does not know that name yet, or in place of the class it knows
  when it subclasses that one (``inception-v3-compat`` adds the sFID layer so); ``None``: torch-fidelity's own;
- a metric whose layer is neither in ``layers`` nor a default of the torch-fidelity class (``sfid`` needs a
  spatial layer) is refused for that extractor with one line;
- ``num_classes`` and ``classifier``: for extractors that are classifiers; ``classifier(device)`` returns a
  function from a ``uint8`` RGB batch ``[N, 3, H, W]`` (any size) on ``device`` to logits ``[N, num_classes]``.
  The evaluator uses it for ``class_accuracy``.

Weights of ``inception-v3-compat`` are never downloaded here: they come from the ``weights_path``
parameter (``dtr eval --weights``, ``eval.weights_path``), else ``$DTR_INCEPTION_WEIGHTS``, else torch hub's
checkpoint folder (where torch-fidelity would have downloaded them); otherwise the factory fails at once
with one line naming the file. ``digits-classifier`` is trained on first use (seconds, on the CPU, fixed
seed) and cached under ``$DTR_CACHE_DIR`` (default ``~/.cache/dtr_plugins``).
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.errors import UserError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.images import to_uint8
from dtr_plugins.core.io import file_sha256, save_torch


class EvalError(UserError):
    """Evaluation cannot run as asked (missing weights file, bad metric, unusable inputs)."""


#: torch-fidelity's Inception weights (converted from TensorFlow's 2015-12-05 graph); the file name its
#: downloader stores in torch hub's checkpoint folder
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_WEIGHTS_ENV = "DTR_INCEPTION_WEIGHTS"

DIGITS_CLASSIFIER_NAME = "digits-classifier"
DIGITS_INPUT_SIZE = 8
DIGITS_VERSION = 1  # bump when the architecture or the training recipe changes (new cache file)


def cache_root() -> Path:
    """``$DTR_CACHE_DIR``, else ``~/.cache/dtr_plugins``: trained extractors and reference statistics."""
    env = os.environ.get("DTR_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dtr_plugins"


@dataclass(frozen=True)
class FeatureExtractorSpec:
    """What a feature-extractor factory returns (see the module docstring)."""

    name: str
    layers: Mapping[str, str]
    weights_path: Path | None = None
    fidelity_class: type | None = None
    num_classes: int | None = None
    classifier: Callable[[torch.device], Callable[[torch.Tensor], torch.Tensor]] | None = field(
        default=None, repr=False)


class WeightsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights_path: str | None = Field(None, description="local weights file (offline use)")


# --------------------------------------------------------------------------------------------------
# inception-v3-compat


def inception_hub_path() -> Path:
    """Where torch-fidelity's downloader keeps the Inception weights (torch hub's checkpoint folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def resolve_inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """The local Inception weights file to use, or :class:`EvalError` (one line) if there is none."""
    how = (f"set eval.weights_path in the config (dtr eval: --weights PATH) or {INCEPTION_WEIGHTS_ENV}=PATH "
           f"to a local copy of {INCEPTION_WEIGHTS_URL}")
    for source, value in (("weights_path/--weights", weights_path),
                          (INCEPTION_WEIGHTS_ENV, os.environ.get(INCEPTION_WEIGHTS_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise EvalError(f"inception-v3-compat: weights file {str(path)!r} (from {source}) not found; "
                                f"it needs {INCEPTION_WEIGHTS_FILE}: {how}")
            return path
    path = inception_hub_path()
    if path.is_file():
        return path
    raise EvalError(f"inception-v3-compat needs its weights file {INCEPTION_WEIGHTS_FILE}, which is not in "
                    f"{path.parent} (no download is attempted): {how}")


def _check_state_dict(path: Path, name: str, key: str, shape: tuple[int, ...]) -> None:
    """Load ``path`` safely (``weights_only=True``) and check one tensor; any problem is one EvalError line.

    torch-fidelity later loads the file itself without ``weights_only``; this check refuses anything but plain
    tensors first. A file that passed is remembered by path, size and modification time.
    """
    st = os.stat(path)
    _check_state_dict_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, name, key, shape)


@functools.lru_cache(maxsize=16)
def _check_state_dict_cached(path: str, size: int, mtime_ns: int, name: str, key: str,
                             shape: tuple[int, ...]) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file, whatever the cause
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"{name}: cannot load weights file {path!r} with weights_only=True: {msg}") from None
    tensor = state.get(key) if isinstance(state, dict) else None
    if not torch.is_tensor(tensor) or tuple(tensor.shape) != shape:
        raise EvalError(f"{name}: {path!r} is not a weights file of {name} (no {key} of shape {list(shape)})")


def inception_v3_compat(weights_path: str | None = None) -> FeatureExtractorSpec:
    """torch-fidelity's Inception-v3 (TF-compatible), the standard FID/IS/KID extractor, with the spatial layer of
    sFID (:mod:`dtr_plugins.extractors.inception_spatial`)."""
    path = resolve_inception_weights(weights_path)
    _check_state_dict(path, "inception-v3-compat", "fc.weight", (1008, 2048))
    from dtr_plugins.extractors.inception_spatial import SFID_LAYER, spatial_inception_class

    return FeatureExtractorSpec(name="inception-v3-compat", weights_path=path,
                                layers={"fid": "2048", "kid": "2048", "prc": "2048", "isc": "logits_unbiased",
                                        "sfid": SFID_LAYER},
                                fidelity_class=spatial_inception_class())


# --------------------------------------------------------------------------------------------------
# digits-classifier


def resize_digits(x: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` floats to the net's 8x8: area averaging to shrink (a 2x bilinear upsample comes back
    almost unblurred), bilinear to enlarge."""
    size = (DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-1] >= DIGITS_INPUT_SIZE and x.shape[-2] >= DIGITS_INPUT_SIZE:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DigitsNet(nn.Module):
    """A small CNN on 8x8 grayscale digits: two convs, a 128-d penultimate layer, 10 logits.

    ``forward`` takes ``uint8`` RGB ``[N, 3, H, W]`` at any size (torch-fidelity's input format): the mean of the
    three channels, scaled to [-1, 1], resized to 8x8 by :func:`resize_digits` (so a 16x16 or 32x32 digit comes
    back to about the 8x8 it was upsampled from).
    """

    feature_scale: torch.Tensor  # a registered buffer (set in __init__)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)
        # set after training so that the penultimate features have unit RMS on the real digits: KID's cubic
        # kernel (x.y / 128 + 1) ** 3 then stays of order one, as with Inception's pool features
        self.register_buffer("feature_scale", torch.ones(()))

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"digits-classifier expects [N, 3, H, W] images, got {list(x.shape)}")
        x = x.float().mean(dim=1, keepdim=True)
        return resize_digits(x) / 127.5 - 1.0

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed input -> (penultimate features [N, 128] times ``feature_scale``, logits [N, 10])."""
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        h = F.relu(self.fc1(x.flatten(1)))
        return h * self.feature_scale, self.fc2(h)

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        with _one_thread_on_cpu(x_uint8):
            return self.features(self.preprocess(x_uint8))[1]


def digits_training_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 scikit-learn digits as ``uint8`` RGB ``[N, 3, 8, 8]`` (the dataset's values, quantized)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().div(16.0).mul(2).sub(1).unsqueeze(1)
    x = to_uint8(x).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(bunch.target).long()


def train_digits_classifier(seed: int = 0, epochs: int = 20, batch_size: int = 128) -> DigitsNet:
    """Train :class:`DigitsNet` on every real digit (CPU, fixed seed, a few seconds); returns it in eval mode.

    Training runs on one CPU thread: for a net this small, threads only add overhead, and a single thread
    keeps the summation order, hence the weights, the same on every machine.

    Inputs get a little Gaussian noise and, for half of each batch, a round trip through 16x16 (how upsampled
    samples reach the net), so that generated samples at either size are read alike.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_digits(seed, epochs, batch_size)
    finally:
        torch.set_num_threads(threads)


def _train_digits(seed: int, epochs: int, batch_size: int) -> DigitsNet:
    images, labels = digits_training_images()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitsNet()
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs * steps_per_epoch)
    x_all = net.preprocess(images)
    up = F.interpolate(x_all, size=(16, 16), mode="bilinear", align_corners=False)
    up = ((up + 1) * 127.5).round().div(127.5).sub(1)  # quantized like a uint8 sample
    x_round = resize_digits(up)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            use_round = torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.5
            x = torch.where(use_round, x_round[idx], x_all[idx])
            x = x + 0.05 * torch.randn(x.shape, generator=gen)
            loss = F.cross_entropy(net.features(x)[1], labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        net.feature_scale.fill_(net.features(x_all)[0].pow(2).mean().rsqrt().item())
    return net


def digits_classifier_path() -> Path:
    return cache_root() / "feature_extractors" / f"digits-classifier-v{DIGITS_VERSION}.pt"


def ensure_digits_classifier() -> Path:
    """The cached classifier's weights file, training it first (atomically written) if it is not there."""
    path = digits_classifier_path()
    if not path.is_file():
        with torch.inference_mode(False), torch.enable_grad():
            net = train_digits_classifier()
        save_torch(net.state_dict(), path)
    return path


def load_digits_net(path: str | os.PathLike) -> DigitsNet:
    net = DigitsNet()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"digits-classifier: cannot load weights file {str(path)!r}: {msg}") from None
    return net.eval().requires_grad_(False)


@contextlib.contextmanager
def _one_thread_on_cpu(x: torch.Tensor):
    """Run a tiny net on one CPU thread (threads only add overhead at this size), then restore the count."""
    threads = torch.get_num_threads()
    if x.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def classifier_fidelity_class(name: str, input_size: int, load: Callable[[str | None], Any]) -> type:
    """A ``torch_fidelity.FeatureExtractorBase`` subclass over a small classifier ``net`` (``net.preprocess``:
    ``uint8 [N, 3, H, W]`` -> its input; ``net.features``: input -> (``penultimate`` features, ``logits``)).

    ``load(weights_path or None)`` returns the net in eval mode (``None``: the default, e.g. trained on first use).
    Features ``penultimate`` serve FID/KID/PRC and ``logits`` IS. torch-fidelity is imported here, on first use,
    so that importing a plugin does not import it."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class ClassifierFeatureExtractor(FeatureExtractorBase):
        def __init__(self, fidelity_name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(fidelity_name, features_list)
            self.net = load(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list():
            return "penultimate", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, input_size, input_size, dtype=torch.uint8)

        def forward(self, x):
            if not (torch.is_tensor(x) and x.dtype == torch.uint8):
                raise ValueError(f"{name} expects uint8 images")
            with _one_thread_on_cpu(x):
                feats, logits = self.net.features(self.net.preprocess(x))
            out = {"penultimate": feats.float(), "logits": logits.float()}
            return tuple(out[layer] for layer in self.features_list)

    ClassifierFeatureExtractor.__name__ = ClassifierFeatureExtractor.__qualname__ = f"{name}-extractor"
    return ClassifierFeatureExtractor


@functools.cache
def digits_fidelity_class() -> type:
    """The torch-fidelity extractor of ``digits-classifier`` (:func:`classifier_fidelity_class`)."""
    return classifier_fidelity_class(DIGITS_CLASSIFIER_NAME, DIGITS_INPUT_SIZE,
                                     lambda path: load_digits_net(path or ensure_digits_classifier()))


def digits_classifier(weights_path: str | None = None) -> FeatureExtractorSpec:
    """A small CNN trained on the real digits (cached); offline FID/KID/PRC/IS and class accuracy."""
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise EvalError(f"digits-classifier: weights file {str(path)!r} not found")
    else:
        path = ensure_digits_classifier()
    _check_state_dict(path, DIGITS_CLASSIFIER_NAME, "fc2.weight", (10, 128))

    def classifier(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        return load_digits_net(path).to(device)

    return FeatureExtractorSpec(name=DIGITS_CLASSIFIER_NAME, weights_path=path,
                                layers={"fid": "penultimate", "kid": "penultimate", "prc": "penultimate",
                                        "isc": "logits"},
                                fidelity_class=digits_fidelity_class(), num_classes=10, classifier=classifier)


@hookimpl
def dtr_register_feature_extractors(register):
    register("inception-v3-compat", inception_v3_compat, params=WeightsParams,
             description="torch-fidelity Inception-v3 (standard FID); weights from a local file, never downloaded")
    register(DIGITS_CLASSIFIER_NAME, digits_classifier, params=WeightsParams,
             description="small CNN trained on the real digits on first use (cached); offline metrics + class accuracy")


__all__ = ["EvalError", "FeatureExtractorSpec", "DigitsNet", "cache_root", "resolve_inception_weights",
           "inception_v3_compat", "digits_classifier", "ensure_digits_classifier", "train_digits_classifier",
           "file_sha256", "INCEPTION_WEIGHTS_FILE", "INCEPTION_WEIGHTS_ENV", "dtr_register_feature_extractors"]
