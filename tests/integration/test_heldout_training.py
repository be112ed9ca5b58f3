"""The held-out loss in training: EMA weights scored on the same fixed inputs in every run of a suite."""
import json

import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.compose import build_components
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.evaluation.heldout import heldout_losses, heldout_set_for
from dtr_plugins.training.trainer import model_kwargs_for

from .test_train import tiny_config


def heldout_lines(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "heldout" in r]


def test_heldout_loss_logged_on_schedule_with_the_ema_weights(tmp_path):
    cfg = tiny_config(tmp_path, "eval.heldout_every=4", "eval.heldout_per_band=3")
    run_dir = dp.train(cfg, progress=False)
    lines = heldout_lines(run_dir)
    assert [r["step"] for r in lines] == [4, 6]  # every 4 steps and at the end
    body = lines[-1]["heldout"]
    assert body["weights"] == "ema" and body["term"] == "mse" and body["num_bands"] == 10 and body["per_band"] == 3
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["heldout"] == {"applied": True, "every": 4, "weights": "ema", "time": "discrete",
                               "target": "epsilon", "num_bands": 10, "per_band": 3, "seed": 0,
                               "fingerprint": body["fingerprint"]}
    # the logged numbers are the EMA checkpoint scored again on the same held-out set
    parts = build_components(cfg)
    parts.model.load_state_dict(torch.load(run_dir / "checkpoints" / "0000006.pt", weights_only=True)["ema"])
    held = heldout_set_for(default_registry(), cfg.data.name, cfg.data.params, parts.diffusion.num_timesteps,
                           per_band=3, seed=0)
    again = heldout_losses(parts.model, parts.diffusion, held, lambda y: model_kwargs_for(parts.model, y))
    assert held.fingerprint == body["fingerprint"]
    assert body["total"] == pytest.approx(again["heldout/total"], rel=1e-5)
    assert body["band3"] == pytest.approx(again["heldout/band3"], rel=1e-5)
    # training-loss records are unchanged: one per log_every
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]


def test_two_runs_of_other_seeds_and_routings_share_the_heldout_inputs(tmp_path):
    a = dp.train(tiny_config(tmp_path / "a", "eval.heldout_per_band=2"), progress=False)
    b = dp.train(tiny_config(tmp_path / "b", "seed=11", "routing={name: vanilla}", "eval.heldout_per_band=2"),
                 progress=False)
    (la,), (lb,) = heldout_lines(a), heldout_lines(b)
    assert la["heldout"]["fingerprint"] == lb["heldout"]["fingerprint"]
    assert la["heldout"]["total"] != lb["heldout"]["total"]  # other weights, same inputs


def test_heldout_off_is_recorded(tmp_path):
    run_dir = dp.train(tiny_config(tmp_path, "eval.heldout_every=0"), progress=False)
    assert heldout_lines(run_dir) == []
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["heldout"] == {"applied": False, "why": "eval.heldout_every is 0"}


def test_flow_matching_runs_score_the_velocity_mse_on_fixed_continuous_times(tmp_path):
    """Flow runs get a held-out loss too (velocity MSE over bands of u), the same inputs whatever the seed
    and routing, and other inputs than a Gaussian run's (the report pairs runs within one process)."""
    flow = ("diffusion={name: flow_matching, steps: 100}", "train.ckpt_every=0", "sample.sampler=heun",
            "sample.respacing='5'", "eval.heldout_every=2", "eval.heldout_per_band=2", "train.steps=2")
    cfg = tiny_config(tmp_path / "a", *flow)
    a = dp.train(cfg, progress=False)
    b = dp.train(tiny_config(tmp_path / "b", *flow, "seed=11", "routing={name: vanilla}"), progress=False)
    g = dp.train(tiny_config(tmp_path / "g", "eval.heldout_every=2", "eval.heldout_per_band=2", "train.steps=2",
                             "train.ckpt_every=0"), progress=False)
    (la,), (lb,), (lg,) = heldout_lines(a), heldout_lines(b), heldout_lines(g)
    body = la["heldout"]
    assert la["step"] == 2 and body["time"] == "continuous" and body["term"] == "mse" and body["weights"] == "ema"
    assert body["fingerprint"] == lb["heldout"]["fingerprint"] != lg["heldout"]["fingerprint"]
    assert lg["heldout"]["time"] == "discrete"
    assert body["total"] != lb["heldout"]["total"]
    assert all(body[f"band{k}"] > 0 for k in range(10))
    meta = json.loads((a / "meta.json").read_text())
    assert meta["heldout"]["applied"] is True and meta["heldout"]["time"] == "continuous"
    assert meta["heldout"]["target"] == "velocity"

    # the logged number is the flow's own loss of the EMA weights on those inputs
    parts = build_components(cfg)
    parts.model.load_state_dict(torch.load(a / "checkpoints" / "0000002.pt", weights_only=True)["ema"])
    held = heldout_set_for(default_registry(), cfg.data.name, cfg.data.params, parts.diffusion.num_timesteps,
                           per_band=2, time="continuous")
    assert held.fingerprint == body["fingerprint"]
    got = heldout_losses(parts.model, parts.diffusion, held, lambda y: model_kwargs_for(parts.model, y))
    assert got["heldout/total"] == pytest.approx(body["total"], rel=1e-5)
