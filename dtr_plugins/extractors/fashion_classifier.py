"""``fashion-classifier``: a small CNN trained on Fashion-MNIST's training split, for offline metrics.

Features for FID / KID / precision-recall (``penultimate``, 128-d, scaled to unit RMS on the training images)
and logits for IS and class accuracy (``logits``, 10 classes), like ``digits-classifier`` but at 28x28.

Training (on first use, then cached): the 60,000 training images, :data:`EPOCHS` epochs of Adam with a one-cycle
learning rate, batch :data:`BATCH_SIZE`, one CPU thread and a fixed seed, so the weights are the same on every
machine with the same torch build. The cache file is keyed by content: the SHA-256 of the four IDX files, the
recipe version and the seed (:func:`classifier_path`); next to the weights it stores the accuracy on the 10,000
test images, which evaluation records beside every number the classifier produces. Training refuses to cache
a classifier below :data:`MIN_TEST_ACCURACY`.

Inputs: ``uint8`` RGB ``[N, 3, H, W]`` at any size (torch-fidelity's input format); the channel mean is taken,
scaled to [-1, 1] and resized to 28x28 (area averaging to shrink, bilinear to enlarge).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dtr_plugins.core.errors import DataError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.io import save_torch, write_json
from dtr_plugins.core.log import show_progress
from dtr_plugins.data.fashion_mnist import DEBIAN_PATH, FILES, find_file, load_split
from dtr_plugins.extractors.builtin import FeatureExtractorSpec, classifier_fidelity_class

logger = logging.getLogger(__name__)

NAME = "fashion-classifier"
INPUT_SIZE = 28
#: the training recipe's version: part of the cache key
VERSION = 1
EPOCHS = 4
BATCH_SIZE = 128
SEED = 0
#: a classifier below this test accuracy is refused (its features would not separate the classes)
MIN_TEST_ACCURACY = 0.90


def resize(x: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` floats to 28x28: area averaging to shrink, bilinear to enlarge."""
    if tuple(x.shape[-2:]) == (INPUT_SIZE, INPUT_SIZE):
        return x
    if min(x.shape[-2:]) >= INPUT_SIZE:
        return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


class FashionNet(nn.Module):
    """Two conv blocks (32 and 64 channels, each conv + ReLU + 2x2 max-pool), a 128-d layer, 10 logits."""

    feature_scale: torch.Tensor  # registered buffer: 1 / RMS of the penultimate features on the training images

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)
        self.register_buffer("feature_scale", torch.ones(()))

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """``uint8`` ``[N, 1 or 3, H, W]`` -> float ``[N, 1, 28, 28]`` in [-1, 1]. Raises ValueError on other shapes."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"{NAME} expects [N, 3, H, W] images, got {list(x.shape)}")
        return resize(x.float().mean(dim=1, keepdim=True)) / 127.5 - 1.0

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed ``[N, 1, 28, 28]`` -> (penultimate ``[N, 128]`` times ``feature_scale``, logits ``[N, 10]``)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        h = F.relu(self.fc1(x.flatten(1)))
        return h * self.feature_scale, self.fc2(h)

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.features(self.preprocess(x_uint8))[1]


def data_digest(path: str | os.PathLike[str] = DEBIAN_PATH) -> str:
    """SHA-256 over the four IDX files' bytes (in a fixed order): the data part of the cache key."""
    h = hashlib.sha256()
    for split in ("train", "test"):
        for name in FILES[split]:
            h.update(find_file(path, name).read_bytes())
    return h.hexdigest()


def as_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 28, 28]`` -> ``uint8 [N, 3, 28, 28]`` (what evaluation feeds an extractor)."""
    return images.unsqueeze(1).expand(-1, 3, -1, -1)


def split_accuracy(net: FashionNet, path: str | os.PathLike[str] = DEBIAN_PATH, batch: int = 1000) -> float:
    """Share of the 10,000 test images whose arg-max logit is their label."""
    images, labels = load_split(path, "test")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            correct += int((net(as_uint8_rgb(images[i:i + batch])).argmax(1) == labels[i:i + batch]).sum())
    return correct / len(images)


def train_classifier(path: str | os.PathLike[str] = DEBIAN_PATH, *, seed: int = SEED, epochs: int = EPOCHS,
                     progress: Callable[[int, int], None] | None = None) -> FashionNet:
    """Train :class:`FashionNet` on the training split on one CPU thread; returns it in eval mode.

    ``progress(done, total)`` is called after every batch. Raises :class:`DataError` when the files are missing."""
    images, labels = load_split(path, "train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = FashionNet()
        gen = torch.Generator().manual_seed(seed)
        x_all = net.preprocess(as_uint8_rgb(images))
        steps = epochs * ((len(images) + BATCH_SIZE - 1) // BATCH_SIZE)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        net.train()
        done = 0
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=gen)
            for i in range(0, len(images), BATCH_SIZE):
                idx = order[i:i + BATCH_SIZE]
                x = x_all[idx]
                flip = torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.5
                x = torch.where(flip, x.flip(-1), x)  # garments read the same mirrored
                loss = F.cross_entropy(net.features(x)[1], labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if progress is not None:
                    progress(done, steps)
        net.eval().requires_grad_(False)
        with torch.no_grad():
            rms = torch.cat([net.features(x_all[i:i + 5000])[0] for i in range(0, len(x_all), 5000)]).pow(2).mean()
            net.feature_scale.fill_(float(rms.rsqrt()))
        return net
    finally:
        torch.set_num_threads(threads)


def classifier_path(path: str | os.PathLike[str] = DEBIAN_PATH, digest: str | None = None) -> Path:
    """The cache file of the classifier trained on the files under ``path`` (keyed by their content;
    ``digest``: their :func:`data_digest` when the caller has it already, so the files are read once)."""
    from dtr_plugins.extractors.builtin import cache_root

    digest = digest or data_digest(path)
    return cache_root() / "feature_extractors" / f"{NAME}-v{VERSION}-s{SEED}-{digest[:16]}.pt"


def ensure_classifier(path: str | os.PathLike[str] = DEBIAN_PATH) -> tuple[Path, float]:
    """``(weights file, test accuracy)``: the cached classifier, trained first when absent (about five minutes on
    two idle CPU cores).

    Raises :class:`DataError` when the data are missing or the trained classifier is below
    :data:`MIN_TEST_ACCURACY` (nothing is cached then)."""
    digest = data_digest(path)
    weights = classifier_path(path, digest)
    record = weights.with_suffix(".json")
    if weights.is_file() and record.is_file():
        import json

        return weights, float(json.loads(record.read_text())["test_accuracy"])
    from tqdm import tqdm

    logger.info(f"{NAME}: not cached yet: training it on the Fashion-MNIST training split, once (about five "
                f"minutes on two idle CPU cores); cached as {weights}")
    with tqdm(total=1, desc=f"{NAME}: training on first use (cached)", unit="batch", leave=False,
              disable=not show_progress()) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        with torch.inference_mode(False), torch.enable_grad():
            net = train_classifier(path, progress=progress)
    accuracy = split_accuracy(net, path)
    if accuracy < MIN_TEST_ACCURACY:
        raise DataError(f"{NAME}: test accuracy {accuracy:.4f} is below {MIN_TEST_ACCURACY} (data under {path}); "
                        "the classifier was not cached")
    save_torch(net.state_dict(), weights)
    write_json(record, {"name": NAME, "version": VERSION, "seed": SEED, "data_sha256": digest,
                        "test_accuracy": accuracy, "test_images": 10000})
    return weights, accuracy


@functools.cache
def load_net(weights: str) -> FashionNet:
    net = FashionNet()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)


@dataclass(frozen=True)
class FashionClassifierSpec(FeatureExtractorSpec):
    """The ``fashion-classifier`` extractor; ``record()`` is written beside every number it produces."""

    test_accuracy: float = 0.0
    data_path: str = DEBIAN_PATH

    def record(self) -> dict[str, Any]:
        return {"test_accuracy": self.test_accuracy, "test_images": 10000, "trained_on": "Fashion-MNIST train (60,000)",
                "recipe_version": VERSION, "seed": SEED}


@functools.cache
def fidelity_class() -> type:
    """The torch-fidelity extractor of ``fashion-classifier``
    (:func:`~dtr_plugins.extractors.builtin.classifier_fidelity_class`)."""
    return classifier_fidelity_class(NAME, INPUT_SIZE, lambda path: load_net(str(path or ensure_classifier()[0])))


class FashionClassifierParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights_path: str | None = Field(None, description="a trained classifier's weights file (its .json beside it); "
                                                       "default: trained on first use and cached")
    data_path: str = Field(DEBIAN_PATH, description="Fashion-MNIST IDX folder (training data and test accuracy)")


def fashion_classifier(weights_path: str | None = None, data_path: str = DEBIAN_PATH) -> FashionClassifierSpec:
    """The ``fashion-classifier`` factory. Raises :class:`DataError` (one line) when the weights file or the
    data are missing."""
    import json

    if weights_path:
        weights = Path(weights_path).expanduser()
        record = weights.with_suffix(".json")
        if not weights.is_file() or not record.is_file():
            raise DataError(f"eval.weights_path: {weights} (and {record.name} beside it) not found for {NAME}")
        accuracy = float(json.loads(record.read_text())["test_accuracy"])
    else:
        weights, accuracy = ensure_classifier(data_path)

    def classifier(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        return load_net(str(weights)).to(device)

    return FashionClassifierSpec(name=NAME, weights_path=weights, fidelity_class=fidelity_class(), num_classes=10,
                                 classifier=classifier, test_accuracy=accuracy, data_path=str(data_path),
                                 layers={"fid": "penultimate", "kid": "penultimate", "prc": "penultimate",
                                         "isc": "logits"})


@hookimpl
def dtr_register_feature_extractors(register):
    register(NAME, fashion_classifier, params=FashionClassifierParams,
             description="small CNN trained on Fashion-MNIST's training split on first use (cached by content); "
                         "its test accuracy is recorded with every number")
