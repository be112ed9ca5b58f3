"""Evaluation with torch-fidelity: digits-classifier metrics, reference cache, inputs, offline Inception errors.

Fast on purpose: the digits classifier trains once per session (into the session's ``DTR_CACHE_DIR``), KID
uses 10 subsets, and nothing is ever downloaded.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dtr_plugins.core.errors import DataError, UserError
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.data import digits as digits_plugin
from dtr_plugins.data.digits import Digits
from dtr_plugins.engine import feature_extractors as fe_plugin
from dtr_plugins.engine.evaluate import (
    EvalError,
    dataset_reference,
    evaluate,
    evaluate_model_samples,
    parse_dataset_reference,
    to_uint8,
)
from dtr_plugins.engine.feature_extractors import INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILE

from ..conftest import ROOT

FAST = {"kid_subsets": 10}


@pytest.fixture(scope="module")
def registry():
    """Only the plugins these tests use (so unrelated plugins cannot interfere)."""
    return build_registry([digits_plugin, fe_plugin], entry_points=False)


def real_digits(split: str, image_size: int = 8):
    ds = Digits(split=split, image_size=image_size)
    return to_uint8(ds.images).permute(0, 2, 3, 1).numpy(), ds.labels.numpy()


def noise_images(n: int = 900, size: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def digits_eval(samples, ref="dataset:digits?split=b", **kwargs):
    kwargs.setdefault("feature_extractor", "digits-classifier")
    kwargs.setdefault("fidelity_options", FAST)
    kwargs.setdefault("device", "cpu")
    return evaluate(samples, ref, **kwargs)


def test_digits_fid_real_far_below_noise_and_metrics_in_range(tmp_path, registry):
    images, labels = real_digits("a")
    npz = tmp_path / "samples.npz"
    np.savez(npz, arr_0=images, labels=labels)
    real = digits_eval(str(npz), metrics=["fid", "kid", "prc", "isc"], registry=registry, cache_dir=tmp_path / "c")
    noise = digits_eval(noise_images(), metrics=["fid", "kid", "prc"], registry=registry, cache_dir=tmp_path / "c")

    assert real["frechet_inception_distance"] * 10 <= noise["frechet_inception_distance"]
    for r in (real, noise):
        for key in ("kernel_inception_distance_mean", "kernel_inception_distance_std", "precision", "recall"):
            assert np.isfinite(r[key])
        assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
        assert r["kernel_inception_distance_std"] >= 0
        assert r["feature_extractor"] == "digits-classifier" and len(r["weights_sha256"]) == 64
        assert r["num_reference"] == 899
    assert abs(real["kernel_inception_distance_mean"]) < 0.05 < noise["kernel_inception_distance_mean"]
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert noise["precision"] < 0.2 and noise["recall"] < 0.2
    assert 8.0 < real["inception_score_mean"] <= 10.0
    assert real["num_samples"] == 898 and noise["num_samples"] == 900
    assert real["class_accuracy"] > 0.9  # labels read from the npz
    assert "class_accuracy" not in noise  # no labels given


def test_reference_statistics_cached_and_reused(tmp_path, registry, monkeypatch):
    images, _ = real_digits("a")
    cache = tmp_path / "cache"
    first = digits_eval(images, metrics=["fid", "kid"], registry=registry, cache_dir=cache)
    assert first["reference_cache"] == "miss"
    files = sorted(cache.iterdir())
    assert any(f.name.endswith(".json") for f in files)
    assert any("features-penultimate" in f.name for f in files)
    stamps = {f: f.stat().st_mtime_ns for f in files}

    # the second run must not even build the reference dataset
    def refuse(**_):
        raise AssertionError("reference dataset rebuilt despite the cache")

    cached_registry = build_registry([digits_plugin, fe_plugin], entry_points=False)
    info = cached_registry.plugins[("dataset", "digits")]
    monkeypatch.setitem(cached_registry.plugins, ("dataset", "digits"),
                        type(info)(**{**info.__dict__, "factory": refuse}))
    second = digits_eval(images, metrics=["fid", "kid"], registry=cached_registry, cache_dir=cache)
    assert second["reference_cache"] == "hit"
    for key in ("frechet_inception_distance", "kernel_inception_distance_mean", "num_reference"):
        assert second[key] == first[key]
    assert {f: f.stat().st_mtime_ns for f in sorted(cache.iterdir())} == stamps  # reused, not rewritten

    # another size of the reference is another cache entry
    with pytest.warns(UserWarning, match="resizes both"):
        other = digits_eval(images, "dataset:digits?split=b&image_size=16", metrics=["fid"], registry=registry,
                            cache_dir=cache)
    assert other["reference_cache"] == "miss" and other["reference_image_size"] == [16, 16]


def test_class_accuracy_on_16px_npz_and_reference_follows_sample_size(tmp_path, registry):
    images, labels = real_digits("a", image_size=16)
    npz = tmp_path / "samples16.npz"
    np.savez(npz, arr_0=images, labels=labels)
    result = digits_eval(str(npz), metrics=["fid"], registry=registry, cache_dir=tmp_path / "c")
    assert result["class_accuracy"] > 0.9
    assert result["reference_image_size"] == [16, 16]  # image_size defaulted to the samples' size
    assert "image_size=16" in result["reference"]
    assert result["frechet_inception_distance"] < 5.0

    shuffled = np.random.default_rng(0).permutation(labels)
    wrong = evaluate_model_samples(images, shuffled, "dataset:digits?split=b", metrics=["fid"],
                                   feature_extractor="digits-classifier", registry=registry,
                                   cache_dir=tmp_path / "c", device="cpu")
    assert wrong["class_accuracy"] < 0.3


def test_png_folders_grayscale_and_rgb(tmp_path, registry):
    images, _ = real_digits("a")
    gray, rgb = tmp_path / "gray", tmp_path / "rgb"
    gray.mkdir()
    rgb.mkdir()
    for i, img in enumerate(images[:200]):
        Image.fromarray(img[..., 0], mode="L").save(gray / f"{i:04d}.png")
        Image.fromarray(np.repeat(img, 3, axis=-1), mode="RGB").save(rgb / f"{i:04d}.png")
    a = digits_eval(str(gray), str(rgb), metrics=["fid"], registry=registry, cache=False)
    assert a["num_samples"] == a["num_reference"] == 200
    assert abs(a["frechet_inception_distance"]) < 1e-3  # the same digits, once gray, once RGB
    assert a["reference_cache"] == "off"


def test_input_errors(tmp_path, registry):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        digits_eval(str(empty), registry=registry)

    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(broken / "0.png")
    (broken / "1.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="1.png: cannot read image"):
        digits_eval(str(broken), registry=registry)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "0.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mixed / "1.png")
    with pytest.raises(DataError, match="share a size"):
        digits_eval(str(mixed), registry=registry)

    with pytest.raises(DataError, match="uint8"):
        digits_eval(np.zeros((10, 8, 8, 3), np.float32), registry=registry)
    with pytest.raises(DataError, match="NHWC"):
        digits_eval(np.zeros((10, 3, 8, 8), np.uint8), registry=registry)
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read .npz"):
        digits_eval(str(bad_npz), registry=registry)
    with pytest.raises(DataError, match="no such file"):
        digits_eval(str(tmp_path / "missing"), registry=registry)
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        digits_eval(noise_images(20), "dataset:nope", registry=registry)
    with pytest.raises(UserError, match="split"):
        digits_eval(noise_images(20), "dataset:digits?split=c", registry=registry)
    with pytest.raises(EvalError, match="metrics"):
        digits_eval(noise_images(20), metrics=["fd"], registry=registry)
    with pytest.raises(UserError, match="unknown feature_extractor"):
        digits_eval(noise_images(20), feature_extractor="nope", registry=registry)


def test_reference_syntax(registry):
    assert parse_dataset_reference("dataset:digits?split=b&image_size=16", registry) == (
        "digits", {"split": "b", "image_size": 16})
    assert parse_dataset_reference("dataset:digits", registry) == ("digits", {})
    ref = dataset_reference("digits", split="a", image_size=8, random_flip=True)
    assert ref == "dataset:digits?split=a&image_size=8"
    assert parse_dataset_reference(ref, registry) == ("digits", {"split": "a", "image_size": 8})


def test_inception_weights_resolution(tmp_path, monkeypatch, registry):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(EvalError, match=INCEPTION_WEIGHTS_FILE) as err:
        registry.build("feature_extractor", "inception-v3-compat")
    assert "\n" not in str(err.value) and "--weights" in str(err.value)
    with pytest.raises(EvalError, match="not found"):
        registry.build("feature_extractor", "inception-v3-compat", weights_path=str(tmp_path / "none.pth"))
    fake = tmp_path / "fake.pth"
    torch.save({"something": torch.zeros(3)}, fake)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(fake))
    with pytest.raises(EvalError, match="not a weights file of inception-v3-compat"):
        registry.build("feature_extractor", "inception-v3-compat")


def test_cli_missing_inception_weights_exits_2_with_one_line(tmp_path):
    npz = tmp_path / "s.npz"
    np.savez(npz, arr_0=noise_images(16))
    env = {k: v for k, v in os.environ.items() if k != INCEPTION_WEIGHTS_ENV}
    env["TORCH_HOME"] = str(tmp_path / "torch-home")  # an empty hub cache: nothing to find, nothing downloaded
    proc = subprocess.run([sys.executable, "-m", "dtr_plugins", "eval", "--samples", str(npz),
                           "--ref", "dataset:digits?split=b", "--out", str(tmp_path / "e.json")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("dtr: warning:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("dtr: error: inception-v3-compat")
    assert INCEPTION_WEIGHTS_FILE in errors[0] and "--weights" in errors[0] and INCEPTION_WEIGHTS_ENV in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "e.json").exists()


def test_cli_eval_digits_classifier(tmp_path, run_cli):
    images, labels = real_digits("a")
    npz = tmp_path / "samples.npz"
    np.savez(npz, arr_0=images, labels=labels)
    out = tmp_path / "e.json"
    code, stdout, _ = run_cli("eval", "--samples", str(npz), "--ref", "dataset:digits?split=b",
                              "--feature-extractor", "digits-classifier", "--metrics", "fid", "prc",
                              "--out", str(out))
    assert code == 0
    result = json.loads(out.read_text())
    assert result == json.loads(stdout)
    assert {"frechet_inception_distance", "precision", "recall", "class_accuracy", "weights_sha256",
            "num_samples", "num_reference"} <= set(result)
    assert result["class_accuracy"] > 0.9

    code, _, err = run_cli("eval", "--samples", str(tmp_path / "nothing"), "--ref", "dataset:digits",
                           "--feature-extractor", "digits-classifier", "--out", str(out))
    assert code == 2 and "no such file" in err
