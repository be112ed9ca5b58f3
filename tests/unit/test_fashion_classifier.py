"""``fashion-classifier``: training, its content-keyed cache, the accuracy floor and the record it leaves."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dtr_plugins.core.contracts import FeatureExtractor, SupportsExtractorRecord
from dtr_plugins.core.errors import DataError
from dtr_plugins.core.io import save_torch
from dtr_plugins.extractors import fashion_classifier as fc

from .test_fashion_mnist import fake_data, write_split


@pytest.fixture
def fake_folder(tmp_path):
    folder = tmp_path / "fashion"
    write_split(folder, "train", *fake_data(64, 0), gz=True)
    write_split(folder, "test", *fake_data(32, 1), gz=True)
    return folder


def test_training_is_deterministic_and_scales_features(fake_folder, monkeypatch):
    monkeypatch.setattr(fc, "BATCH_SIZE", 32)
    a = fc.train_classifier(fake_folder, epochs=1)
    b = fc.train_classifier(fake_folder, epochs=1)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    images, _ = fc.load_split(fake_folder, "train")
    with torch.no_grad():
        feats, logits = a.features(a.preprocess(fc.as_uint8_rgb(images)))
    assert logits.shape == (64, 10) and feats.shape == (64, 128)
    assert feats.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)  # unit RMS on the training images
    assert 0.0 <= fc.split_accuracy(a, fake_folder) <= 1.0


def test_cache_key_follows_the_data_content(fake_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DTR_CACHE_DIR", str(tmp_path / "cache"))
    before = fc.classifier_path(fake_folder)
    write_split(fake_folder, "test", *fake_data(32, 2), gz=True)  # other test images: another classifier file
    assert fc.classifier_path(fake_folder) != before and before.parent == fc.classifier_path(fake_folder).parent


def test_a_classifier_below_the_floor_is_refused_and_not_cached(fake_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DTR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fc, "EPOCHS", 1)
    with pytest.raises(DataError, match=r"test accuracy .* below 0.9"):  # random labels: chance accuracy
        fc.ensure_classifier(fake_folder)
    assert not fc.classifier_path(fake_folder).exists()


def test_given_weights_carry_their_accuracy_into_the_record(fake_folder, tmp_path):
    weights = tmp_path / "clf.pt"
    save_torch(fc.FashionNet().state_dict(), weights)
    with pytest.raises(DataError, match="clf.json"):
        fc.fashion_classifier(weights_path=str(weights))
    weights.with_suffix(".json").write_text(json.dumps({"test_accuracy": 0.9123}))
    spec = fc.fashion_classifier(weights_path=str(weights), data_path=str(fake_folder))
    assert isinstance(spec, FeatureExtractor) and isinstance(spec, SupportsExtractorRecord)
    assert spec.record()["test_accuracy"] == 0.9123 and spec.num_classes == 10
    logits = spec.classifier(torch.device("cpu"))(torch.zeros(2, 3, 56, 56, dtype=torch.uint8))
    assert logits.shape == (2, 10)


def test_the_classifier_reads_the_data_where_the_config_says(fake_folder, tmp_path, monkeypatch):
    """``eval.feature_extractor_params`` reaches the extractor plugin (fashion-classifier's ``data_path``: Fashion-MNIST
    outside Debian's folder), is checked by validate against the plugin's params model, and leaves the fingerprint of
    configs without it unchanged."""
    import numpy as np

    from dtr_plugins.compose import validate_run
    from dtr_plugins.core.config import load_config
    from dtr_plugins.core.errors import ConfigError
    from dtr_plugins.evaluation.evaluate import EvalSettings, evaluate

    def stop(data_path=fc.DEBIAN_PATH):
        raise DataError(f"would train on {data_path}")

    monkeypatch.setattr(fc, "ensure_classifier", stop)
    settings = EvalSettings(metrics=["isc"], feature_extractor="fashion-classifier", device="cpu",
                            extractor_params={"data_path": str(fake_folder)})
    with pytest.raises(DataError, match=f"would train on {fake_folder}$"):
        evaluate(np.zeros((4, 28, 28, 3), np.uint8), None, settings)

    config = Path(__file__).resolve().parents[2] / "configs" / "fashion_dit.yaml"
    sets = [f"data.path={fake_folder}", f"output_dir={tmp_path / 'runs'}", "eval.at_end=false"]
    plain = load_config(config, overrides=sets)
    assert "feature_extractor_params" not in plain.to_dict()["eval"]  # absent when empty: fingerprints stay
    moved = load_config(config, overrides=[*sets, f"eval.feature_extractor_params={{data_path: {fake_folder}}}"])
    assert moved.to_dict()["eval"]["feature_extractor_params"] == {"data_path": str(fake_folder)}
    validate_run(moved)
    for params, error in (("{data_pth: x}", r"^eval.feature_extractor_params.data_pth: .*"),
                          ("{weights_path: w.pt}", r"^eval.feature_extractor_params.weights_path: set eval.weights")):
        with pytest.raises(ConfigError, match=error):
            validate_run(load_config(config, overrides=[*sets, f"eval.feature_extractor_params={params}"]))


def test_dtr_eval_passes_extractor_params(fake_folder, tmp_path, monkeypatch, run_cli):
    import numpy as np

    def stop(data_path=fc.DEBIAN_PATH):
        raise DataError(f"would train on {data_path}")

    monkeypatch.setattr(fc, "ensure_classifier", stop)
    samples = tmp_path / "s.npz"
    np.savez(samples, np.zeros((4, 28, 28, 3), np.uint8))
    base = ("eval", "--samples", str(samples), "--ref", str(samples), "--metrics", "isc", "--feature-extractor",
            "fashion-classifier", "--out", str(tmp_path / "e.json"), "--device", "cpu")
    for param, line in ((f"data_path={fake_folder}", f"would train on {fake_folder}"),
                        ("data_pth=x", "data_pth"),
                        ("data_path", "--extractor-param: 'data_path' is not of the form KEY=VALUE"),
                        ("data_path=a\tb", "--extractor-param: 'data_path=a\\tb' holds a control character")):
        code, _, err = run_cli(*base, "--extractor-param", param)
        assert code == 2 and line in err and "Traceback" not in err, err
    assert not (tmp_path / "e.json").exists()
