"""Metrics of #28: sFID (ADM's spatial Inception features), FD-DINOv2 (the ``dinov2`` extractor) and reference
batches in the ADM evaluator's ``.npz`` layout. Small random extractors only: nothing is downloaded."""
import numpy as np
import pytest
import scipy.linalg
import torch

from dtr_plugins.evaluation.evaluate import EvalSettings, evaluate
from dtr_plugins.evaluation.features import check_layers, feature_layers
from dtr_plugins.evaluation.metrics import compute_metrics, metric_settings
from dtr_plugins.evaluation.references import resolve_reference
from dtr_plugins.evaluation.stats_cache import ReferenceStats, fid_statistics
from dtr_plugins.extractors.builtin import EvalError


def _direct_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_sfid_is_the_frechet_distance_of_the_spatial_layer():
    rng = np.random.default_rng(0)
    mine, theirs = rng.normal(size=(60, 5)), rng.normal(size=(80, 5)) * 1.5 + 0.3
    ref = ReferenceStats(80, (8, 8), {}, {"s": fid_statistics(torch.from_numpy(theirs))})
    out = compute_metrics(["sfid"], {"s": torch.from_numpy(mine)}, ref, {"sfid": "s"},
                          metric_settings(["sfid"], 60, 80, None))
    assert out["sfid"] == pytest.approx(_direct_frechet(mine, theirs), rel=1e-6)
    assert out["sfid_feature_dim"] == 5 and out["sfid_rank_deficient"] is False
    wrong = ReferenceStats(0, (0, 0), {}, {"s": {"mu": np.zeros(4), "sigma": np.eye(4)}})
    with pytest.raises(EvalError, match="sfid: the reference statistics are 4-dimensional, the samples' features 5"):
        compute_metrics(["sfid"], {"s": torch.from_numpy(mine)}, wrong, {"sfid": "s"},
                        metric_settings(["sfid"], 60, None, None))


def test_spatial_inception_reads_the_first_7_channels_of_mixed_6d_branch1x1(tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from dtr_plugins.extractors.inception_spatial import SFID_LAYER, spatial_inception_class

    weights = tmp_path / "random.pth"
    torch.save({}, weights)  # random initial weights: no Inception download in tests
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    torch.manual_seed(0)
    net = spatial_inception_class()("inception-v3-compat", ["64", SFID_LAYER], feature_extractor_weights_path=weights)
    seen = []
    net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    pooled, spatial = net(x)
    assert pooled.shape == (1, 64) and spatial.shape == (1, 7 * 17 * 17)
    torch.testing.assert_close(spatial, seen[0][:, :7].permute(0, 2, 3, 1).reshape(1, -1))  # ADM's NHWC order
    assert net.convert_features_tuple_to_dict((pooled, spatial)).keys() == {"64", SFID_LAYER}


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dinov2")
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          image_size=224, patch_size=56)
    Dinov2Model(config).eval().save_pretrained(folder)
    return folder


def test_dinov2_features_are_the_cls_token_of_the_resized_normalised_images(tiny_dinov2):
    from transformers import Dinov2Model

    from dtr_plugins.evaluation.features import Extractor
    from dtr_plugins.evaluation.inputs import ArrayImages
    from dtr_plugins.extractors.dinov2 import dinov2, preprocess

    spec = dinov2(weights_path=str(tiny_dinov2))
    assert spec.weights_path == tiny_dinov2 / "model.safetensors"
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    feats = Extractor(spec, ["cls"], torch.device("cpu"), 2, False)(ArrayImages(images), save_cpu_ram=True)["cls"]
    nchw = images.permute(0, 3, 1, 2)
    x = preprocess(nchw)
    assert x.shape == (3, 3, 224, 224)
    flat = torch.full((1, 3, 224, 224), 255, dtype=torch.uint8)  # white: (1 - mean) / std per channel
    torch.testing.assert_close(preprocess(flat)[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406]))
                               / torch.tensor([0.229, 0.224, 0.225]))
    with torch.no_grad():
        out = Dinov2Model.from_pretrained(tiny_dinov2)(pixel_values=x)
    torch.testing.assert_close(feats, out.last_hidden_state[:, 0])  # CLS after the final layer norm
    layers = feature_layers(spec)
    assert layers["fid"] == "cls" and "isc" not in layers and "sfid" not in layers
    with pytest.raises(EvalError, match="metrics: isc need.* feature extractor 'dinov2' does not provide"):
        check_layers(spec, ["fid", "isc"], layers)
    with pytest.raises(EvalError, match="dinov2: .* holds no Dinov2Model"):
        dinov2(weights_path=str(tiny_dinov2.parent))


def _adm_batch(path, images, rng, dim=16):
    np.savez(path, arr_0=images, mu=rng.normal(size=dim), sigma=np.eye(dim), mu_s=rng.normal(size=7),
             sigma_s=np.eye(7))
    return path


def test_adm_reference_batch_serves_every_reference_metric(tiny_dinov2, tmp_path):
    rng = np.random.default_rng(1)
    samples = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    ref_images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    batch = _adm_batch(tmp_path / "VIRTUAL_ref.npz", ref_images, rng)
    settings = EvalSettings(metrics=["fid", "kid", "prc"], feature_extractor="dinov2", weights_path=tiny_dinov2,
                            device="cpu", cache=False, fidelity_options={"kid_subset_size": 4})
    with pytest.warns(UserWarning, match="rank-deficient"):  # 6 and 8 images, 16-dimensional features
        from_file = evaluate(samples, str(batch), settings)
    with pytest.warns(UserWarning, match="rank-deficient"):
        from_array = evaluate(samples, ref_images, settings)
    for key in ("frechet_inception_distance", "kernel_inception_distance_mean", "precision", "recall"):
        assert from_file[key] == pytest.approx(from_array[key])  # arr_0's images, the samples' extractor
    assert from_file["feature_extractor"] == "dinov2" and from_file["num_reference"] == 8


def test_adm_statistics_alone_give_fid_and_sfid_statistics(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "stats.npz"
    np.savez(path, mu=rng.normal(size=4), sigma=np.eye(4), mu_s=rng.normal(size=3), sigma_s=2 * np.eye(3))
    ref = resolve_reference(str(path), (8, 8))
    assert ref.statistics is not None
    assert ref.statistics("fid")["mu"].shape == (4,) and ref.statistics("sfid")["sigma"][0, 0] == 2.0
    plain = tmp_path / "fid_only.npz"
    np.savez(plain, mu=np.zeros(4), sigma=np.eye(4))
    only = resolve_reference(str(plain), (8, 8))
    assert only.statistics is not None
    with pytest.raises(EvalError, match=r"holds no sfid statistics \(mu_s, sigma_s; it has mu, sigma\)"):
        only.statistics("sfid")


def test_validate_refuses_sfid_without_the_spatial_inception(tmp_path, capsys):
    from dtr_plugins.cli import main

    from ..conftest import write
    from .test_config import GOOD

    path = write(tmp_path / "c.yaml", GOOD.replace("eval: {at_end: false}", "eval: {metrics: [sfid], "
                                                   "feature_extractor: digits-classifier, num_samples: 20}"))
    assert main(["validate", str(path), "--config-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "eval.metrics: sfid reads Inception's spatial features; it needs eval.feature_extractor " \
           "inception-v3-compat (got 'digits-classifier')" in err
