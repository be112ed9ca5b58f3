"""Metric edge cases: FID of identical sets is never negative; the Inception Score's splits fit the sample count."""
import warnings

import numpy as np
import pytest
import torch

from dtr_plugins.evaluation.metrics import (
    _never_negative,
    compute_metrics,
    metric_settings,
    settings_problem,
)
from dtr_plugins.evaluation.stats_cache import ReferenceStats, fid_statistics
from dtr_plugins.extractors.builtin import EvalError


def test_fid_of_identical_sets_is_zero_not_negative():
    feats = torch.from_numpy(np.random.default_rng(0).normal(size=(300, 16)) * 3.0 + 1.0)
    ref = ReferenceStats(300, (8, 8), {}, {"f": fid_statistics(feats)})
    settings = metric_settings(["fid"], 300, 300, None)
    results = [compute_metrics(["fid"], {"f": feats}, ref, {"fid": "f"}, settings)["frechet_inception_distance"]
               for _ in range(2)]
    assert all(r >= 0.0 and r < 1e-6 for r in results)


def test_negative_fid_within_round_off_is_zero_and_beyond_it_refused():
    sigma = {"sigma": np.eye(4)}  # traces 4 + 4: round-off tolerance 8e-6
    assert _never_negative(-2e-06, sigma, sigma) == 0.0
    assert _never_negative(3.5, sigma, sigma) == 3.5
    with pytest.raises(EvalError, match="negative beyond round-off"):
        _never_negative(-1e-3, sigma, sigma)


def test_inception_score_splits_follow_the_sample_count():
    assert metric_settings(["isc"], 8, None, None).isc_splits == 1  # not 8 splits of one image (always 1.0)
    assert metric_settings(["isc"], 45, None, None).isc_splits == 4
    assert metric_settings(["isc"], 50000, None, None).isc_splits == 10
    assert metric_settings(["isc"], 8, None, {"isc_splits": 2}).isc_splits == 2
    assert "isc_splits=8 (a split of one image always scores 1" in settings_problem(["isc"], 8, {"isc_splits": 8})
    assert settings_problem(["isc"], 16, {"isc_splits": 8}) is None


def test_inception_score_from_few_samples_warns_and_records_the_split_size():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)) * 4
    settings = metric_settings(["isc"], 8, None, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compute_metrics(["isc"], {"logits": logits}, None, {"isc": "logits"}, settings)
    assert out["isc_images_per_split"] == 8 and out["inception_score_mean"] > 1.5
    assert any("Inception Score from 8 samples in 1 split(s) of 8 image(s)" in str(w.message) for w in caught)


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in caught]


def test_kid_whose_subsets_are_the_whole_sets_warns_and_records_it():
    """200 samples and 200 reference images: the default subset size is 200, every subset is both whole sets."""
    gen = torch.Generator().manual_seed(0)
    feats, ref_feats = torch.randn(200, 8, generator=gen), torch.randn(200, 8, generator=gen) + 0.5
    ref = ReferenceStats(200, (8, 8), {"f": ref_feats}, {})
    settings = metric_settings(["kid"], 200, 200, None)
    assert settings.record(["kid"])["kid_subset_size"] == 200 and settings.record(["kid"])["kid_subsets"] == 100
    out, messages = _caught(lambda: compute_metrics(["kid"], {"f": feats}, ref, {"kid": "f"}, settings))
    assert out["kid_whole_sets"] == ["samples", "reference"] and out["kernel_inception_distance_std"] < 1e-6
    assert any("every subset is the same: the ± is 0 by construction" in m for m in messages)
    bigger = ReferenceStats(400, (8, 8), {"f": torch.randn(400, 8, generator=gen)}, {})
    settings = metric_settings(["kid"], 200, 400, None)
    out, messages = _caught(lambda: compute_metrics(["kid"], {"f": feats}, bigger, {"kid": "f"}, settings))
    assert out["kid_whole_sets"] == ["samples"] and out["kernel_inception_distance_std"] > 1e-5
    assert not any("KID" in m for m in messages)


def test_precision_recall_whose_neighbourhood_is_the_whole_set_warns():
    gen = torch.Generator().manual_seed(0)
    ref = ReferenceStats(4, (8, 8), {"f": torch.randn(4, 8, generator=gen)}, {})
    settings = metric_settings(["prc"], 4, 4, None)  # k = 3: every other image of 4
    out, messages = _caught(lambda: compute_metrics(["prc"], {"f": torch.randn(4, 8, generator=gen)}, ref,
                                                    {"prc": "f"}, settings))
    assert out["prc_whole_set"] is True and any("reaches every other image of 4" in m for m in messages)
    ref = ReferenceStats(10, (8, 8), {"f": torch.randn(10, 8, generator=gen)}, {})
    out, messages = _caught(lambda: compute_metrics(["prc"], {"f": torch.randn(10, 8, generator=gen)}, ref,
                                                    {"prc": "f"}, metric_settings(["prc"], 10, 10, None)))
    assert out["prc_whole_set"] is False and not any("precision/recall" in m for m in messages)


def test_inception_score_in_one_large_split_warns_that_its_std_is_not_measured():
    logits = torch.randn(40, 10, generator=torch.Generator().manual_seed(0)) * 4
    settings = metric_settings(["isc"], 40, None, {"isc_splits": 1})
    out, messages = _caught(lambda: compute_metrics(["isc"], {"logits": logits}, None, {"isc": "logits"}, settings))
    assert out["inception_score_std"] == 0 and any("its std is 0 by construction" in m for m in messages)
