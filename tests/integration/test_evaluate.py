"""Evaluation with torch-fidelity: digits-classifier metrics, reference cache, inputs, offline Inception errors,
and one test per fault of the "trustworthy results" issue (cache keyed by folder content, poisoned cache files,
rank-deficient FID, guided-diffusion's arr_1 labels, class subfolders, too few samples, what the record says).

Fast on purpose: the digits classifier trains once per session (into the session's ``DTR_CACHE_DIR``), KID
uses 10 subsets, and nothing is ever downloaded.
"""
import dataclasses
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
from dtr_plugins.data import image_folder as image_folder_plugin
from dtr_plugins.data.digits import Digits
from dtr_plugins.evaluation.evaluate import (
    EvalError,
    EvalSettings,
    dataset_reference,
    evaluate,
    evaluate_model_samples,
    parse_dataset_reference,
    to_uint8,
)
from dtr_plugins.extractors import builtin as fe_plugin
from dtr_plugins.extractors.builtin import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
)

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
    """:func:`evaluate` with the digits classifier, FAST options on the CPU; ``kwargs``: evaluate's keywords
    and :class:`EvalSettings` fields."""
    kwargs.setdefault("feature_extractor", "digits-classifier")
    fields = {f.name for f in dataclasses.fields(EvalSettings)} - {"metrics", "feature_extractor", "cache_dir"}
    settings = EvalSettings(**{"fidelity_options": FAST, "device": "cpu",
                               **{k: kwargs.pop(k) for k in list(kwargs) if k in fields}})
    return evaluate(samples, ref, settings, **kwargs)


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
    assert [f.suffix for f in files] == [".json", ".npz"]  # one entry: its description and its arrays
    with np.load(files[1], allow_pickle=False) as arrays:  # plain arrays, readable without pickle
        assert arrays["features__penultimate"].shape == (899, 128)
        assert arrays["fid_mu__penultimate"].shape == (128,)
        assert arrays["fid_sigma__penultimate"].shape == (128, 128)
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
    wrong = evaluate_model_samples(images, shuffled, "dataset:digits?split=b",
                                   EvalSettings(metrics=["fid"], feature_extractor="digits-classifier",
                                                cache_dir=tmp_path / "c", device="cpu"), registry=registry)
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
    with pytest.raises(DataError, match=r"bad.npz: not an .npz archive"):
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
                          check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
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


# --------------------------------------------------------------------------------------------------
# trustworthy results: each fault of the issue as a test


def save_pngs(folder, images, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0], mode="L").save(folder / f"{start + i:04d}.png")


def test_folder_reference_statistics_follow_the_folder_content(tmp_path, registry):
    """Adding or replacing images in a reference folder gives new statistics, not the old FID."""
    samples, _ = real_digits("a")
    ref_images, _ = real_digits("b")
    data = tmp_path / "data"
    save_pngs(data, ref_images[:400])
    cache = tmp_path / "cache"
    for ref in (f"dataset:image_folder?path={data}&image_size=8&class_cond=false", str(data)):
        reg = build_registry([digits_plugin, fe_plugin, image_folder_plugin], entry_points=False)
        first = digits_eval(samples, ref, registry=reg, cache_dir=cache)
        again = digits_eval(samples, ref, registry=reg, cache_dir=cache)
        assert (first["reference_cache"], again["reference_cache"]) == ("miss", "hit")
        assert again["frechet_inception_distance"] == first["frechet_inception_distance"]
        assert first["num_reference"] == 400

        save_pngs(data, noise_images(100)[..., :1], start=400)  # add 100 images of noise
        added = digits_eval(samples, ref, registry=reg, cache_dir=cache)
        assert added["reference_cache"] == "miss" and added["num_reference"] == 500
        assert added["frechet_inception_distance"] > first["frechet_inception_distance"] + 1
        assert added["reference_fingerprint"] != first["reference_fingerprint"]

        save_pngs(data, ref_images[400:500], start=400)  # replace the noise by real digits
        replaced = digits_eval(samples, ref, registry=reg, cache_dir=cache)
        assert replaced["reference_cache"] == "miss" and replaced["num_reference"] == 500
        assert replaced["frechet_inception_distance"] < added["frechet_inception_distance"] - 1
        for f in sorted(data.glob("*.png"))[400:]:
            f.unlink()


class Poison:
    """Unpickling this creates ``marker`` (a folder): the proof that a cache file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_poisoned_cache_files_are_never_executed(tmp_path, registry, monkeypatch):
    import pickle

    images, _ = real_digits("a")
    cache = tmp_path / "cache"
    torch_home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(Poison(marker))
    first = digits_eval(images, metrics=["fid", "kid"], registry=registry, cache_dir=cache)
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == 1
    # the entry itself, and every name torch-fidelity would look up (here and in its own default folder)
    entries[0].write_bytes(payload)
    (torch_home / "fidelity_cache").mkdir(parents=True)
    for folder in (cache, torch_home / "fidelity_cache"):
        for suffix in ("features-penultimate", "features-logits", "stat-fid-penultimate"):
            (folder / f"{entries[0].stem}-digits-classifier-{suffix}.pt").write_bytes(payload)
            torch.save(Poison(marker), folder / f"dtr-digits-split=b-image_size8-digits-classifier-{suffix}.pt")

    with pytest.warns(UserWarning, match="ignored"):
        second = digits_eval(images, metrics=["fid", "kid"], registry=registry, cache_dir=cache)
    assert not marker.exists()
    assert second["reference_cache"] == "miss"  # recomputed and rewritten
    assert second["frechet_inception_distance"] == first["frechet_inception_distance"]
    third = digits_eval(images, metrics=["fid", "kid"], registry=registry, cache_dir=cache)
    assert third["reference_cache"] == "hit" and not marker.exists()

    pickle.loads(payload)  # the poison is real: unpickled, it does run
    assert marker.exists()


def test_fid_with_fewer_samples_than_feature_dimensions_warns_and_is_recorded(tmp_path, registry):
    images, _ = real_digits("a")
    with pytest.warns(UserWarning, match=r"FID from 100 samples and 899 reference images with 128-dimensional"):
        few = digits_eval(images[:100], registry=registry, cache_dir=tmp_path / "c")
    assert few["fid_rank_deficient"] is True and few["fid_feature_dim"] == 128
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enough = digits_eval(images[:129], registry=registry, cache_dir=tmp_path / "c")
    assert enough["fid_rank_deficient"] is False and enough["num_samples"] == 129


def test_npz_labels_in_arr_1_guided_diffusion_layout(tmp_path, registry):
    images, labels = real_digits("a")
    npz = tmp_path / "gd.npz"
    np.savez(npz, images, labels)  # guided-diffusion: np.savez(out_path, arr, label_arr) -> arr_0, arr_1
    result = digits_eval(str(npz), registry=registry, cache_dir=tmp_path / "c")
    assert result["sample_labels"] == "arr_1"
    assert result["class_accuracy"] > 0.9
    np.savez(npz, images, np.random.default_rng(0).permutation(labels))
    assert digits_eval(str(npz), registry=registry, cache_dir=tmp_path / "c")["class_accuracy"] < 0.3

    np.savez(npz, images, labels[:10])
    with pytest.raises(DataError, match=r"gd.npz \(arr_1\): labels must be 898 integers"):
        digits_eval(str(npz), registry=registry)
    np.savez(npz, images)
    assert digits_eval(str(npz), registry=registry, cache_dir=tmp_path / "c")["sample_labels"] is None


def test_reference_folder_with_class_subfolders_is_read_recursively(tmp_path, registry):
    samples, _ = real_digits("a")
    ref_images, ref_labels = real_digits("b")
    ref = tmp_path / "ref"
    for c in range(10):  # image_folder layout: one subfolder per class
        save_pngs(ref / f"class{c}", ref_images[ref_labels == c], start=1000 * c)
    (ref / ".hidden").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(ref / ".hidden" / "thumb.png")  # skipped
    by_folder = digits_eval(samples, str(ref), registry=registry, cache=False)
    by_dataset = digits_eval(samples, "dataset:digits?split=b", registry=registry, cache=False)
    assert by_folder["num_reference"] == 899
    assert by_folder["frechet_inception_distance"] == pytest.approx(by_dataset["frechet_inception_distance"],
                                                                    rel=1e-6, abs=1e-9)


def test_too_few_samples_for_the_metric_settings_is_one_line_up_front(tmp_path):
    from dtr_plugins.core.config import EvalConfig
    from dtr_plugins.core.errors import ConfigError
    from dtr_plugins.evaluation.evaluate import check_eval_settings

    with pytest.raises(ConfigError, match=r"eval\.num_samples: 500 image\(s\) are too few for kid with "
                                          r"kid_subset_size=1000"):
        check_eval_settings({"metrics": ["fid", "kid"], "kid_subset_size": 1000}, 500)
    check_eval_settings({"metrics": ["fid", "kid"], "kid_subset_size": 500}, 500)
    with pytest.raises(ConfigError, match=r"3 image\(s\) are too few for prc .*prc_neighborhood=3"):
        check_eval_settings(EvalConfig(metrics=["prc"], num_samples=3))
    check_eval_settings(EvalConfig(metrics=["prc"], num_samples=4))
    with pytest.raises(ConfigError, match="prc_neighborhood=8"):
        check_eval_settings({"metrics": ["prc"], "prc_neighborhood": 8}, 8)
    with pytest.raises(ConfigError, match=r"1 image\(s\) are too few for fid"):
        check_eval_settings(EvalConfig(num_samples=1))
    with pytest.raises(ConfigError, match="eval.metrics: unknown 'fd'"):
        check_eval_settings({"metrics": ["fd"]}, 100)

    # evaluate() finds it before building the extractor (an unknown one would fail later, as a plugin error)
    with pytest.raises(DataError,
                       match=r"<array>: 898 image\(s\) are too few for kid with kid_subset_size=1000") as err:
        evaluate(real_digits("a")[0], "dataset:digits?split=b", metrics=["kid"], feature_extractor="nope",
                 settings=EvalSettings(fidelity_options={"kid_subset_size": 1000}))
    assert "\n" not in str(err.value)
    with pytest.raises(EvalError, match="fidelity_options: cache not allowed"):
        evaluate(real_digits("a")[0], "dataset:digits?split=b", EvalSettings(fidelity_options={"cache": True}))


def test_record_says_what_was_applied(tmp_path, registry):
    images, labels = real_digits("a")
    provenance = {"sampler": "ddim", "steps": 50, "cfg_scale": 1.5, "ema": True, "seed": 3,
                  "precision": "bf16", "world_size": 2}
    result = digits_eval(images[:300], metrics=["fid", "kid", "prc"], labels=labels[:300], registry=registry,
                         cache_dir=tmp_path / "c", provenance=provenance)
    spec = registry.build("feature_extractor", "digits-classifier")
    assert result["feature_extractor"] == "digits-classifier"
    assert result["weights_sha256"] == fe_plugin.file_sha256(spec.weights_path)
    assert result["feature_layers"] == {"fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}
    assert result["num_samples"] == 300 and result["num_reference"] == 899 and result["sample_labels"] == "argument"
    assert result["kid_subset_size"] == 300 and result["kid_subsets"] == 10 and result["prc_neighborhood"] == 3
    assert len(result["reference_fingerprint"]) == 64
    assert result["reference"] == "dataset:digits?image_size=8&channels=1&split=b&random_flip=false"
    assert result["provenance"] == provenance and 0 <= result["precision"] <= 1  # precision: the metric
    other = digits_eval(images[:300], "dataset:digits?split=a", registry=registry, cache_dir=tmp_path / "c")
    assert other["reference_fingerprint"] != result["reference_fingerprint"]
    assert "provenance" not in other

    # dtr sample writes samples.json beside samples.npz: dtr eval records it (the caller's dict updates it)
    out = tmp_path / "sampled"
    out.mkdir()
    np.savez(out / "samples.npz", arr_0=images[:300], labels=labels[:300])
    (out / "samples.json").write_text(json.dumps({"sampler": "ddpm", "respacing": "250", "weights": "ema",
                                                  "seed": 0, "world_size": 1}))
    from_file = digits_eval(str(out / "samples.npz"), registry=registry, cache_dir=tmp_path / "c",
                            provenance={"seed": 7})
    assert from_file["provenance"] == {"sampler": "ddpm", "respacing": "250", "weights": "ema", "seed": 7,
                                       "world_size": 1}
    assert from_file["provenance_file"] == str(out / "samples.json") and from_file["sample_labels"] == "labels"
    (out / "samples.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="samples.json: the samples' provenance must be a JSON object"):
        digits_eval(str(out / "samples.npz"), registry=registry, cache_dir=tmp_path / "c")


def test_fid_against_a_statistics_npz_equals_fid_against_its_images(tmp_path, registry):
    """An .npz of mu and sigma (U-ViT's fid_stats_*.npz layout) is a FID reference: the same FID as the images
    it was computed from; kid / prc are refused in one line (a statistics file holds no features)."""
    images, labels = real_digits("a")
    direct = digits_eval(images, metrics=["fid"], registry=registry, cache_dir=tmp_path / "c")
    (entry,) = (tmp_path / "c").glob("*.npz")  # the reference statistics cached for dataset:digits?split=b
    with np.load(entry) as cached:
        layer = next(k for k in cached.files if k.startswith("fid_mu__")).partition("__")[2]
        stats = tmp_path / "fid_stats_digits_b.npz"
        np.savez(stats, mu=cached[f"fid_mu__{layer}"], sigma=cached[f"fid_sigma__{layer}"])
    scored = digits_eval(images, ref=str(stats), metrics=["fid"], registry=registry, cache_dir=tmp_path / "c2")
    assert scored["frechet_inception_distance"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-6)
    assert scored["reference_cache"] == "statistics" and scored["num_reference"] is None
    with pytest.raises(EvalError, match="holds statistics .* only; kid and prc need reference images"):
        digits_eval(images, ref=str(stats), metrics=["fid", "kid"], registry=registry, cache_dir=tmp_path / "c3")
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.zeros((2, 2)))
    with pytest.raises(DataError, match="bad.npz: FID statistics must be a finite mu"):
        digits_eval(images, ref=str(tmp_path / "bad.npz"), metrics=["fid"], registry=registry)
