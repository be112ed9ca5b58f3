"""Training engine: run directory, exact resume, 2-process torchrun, sampling, divergence."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dtr_plugins as dp

from ..conftest import registry_with, tiny_dit_config


def tiny_config(tmp_path, *overrides):
    path = tiny_dit_config(tmp_path)
    return dp.load_config(path, overrides=[f"output_dir={tmp_path / 'runs'}", *overrides])


def weights(run_dir, step, key="model"):
    ckpt = torch.load(run_dir / "checkpoints" / f"{step:07d}.pt", weights_only=True)
    return ckpt[key]


def test_train_writes_full_run_directory(tmp_path):
    run_dir = dp.train(tiny_config(tmp_path), progress=False)
    assert (run_dir / "config.yaml").exists()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["world_size"] == 1 and meta["precision"] == "fp32" and "finished" in meta
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert len(records[0]["loss_bucket"]) == 10 and records[0]["steps_per_s"] > 0 and records[0]["lr"] == 1e-3
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["0000003.pt", "0000006.pt"]
    ckpt = torch.load(run_dir / "checkpoints" / "0000006.pt", weights_only=True)
    assert {"model", "ema", "optimizer", "loss_weighting", "rng", "step", "config"} <= set(ckpt)
    assert not any(k.startswith("routing.") for k in ckpt["model"])  # official key layout
    assert not list(run_dir.rglob("*.tmp"))


def test_resume_is_bit_identical(tmp_path):
    straight = dp.train(tiny_config(tmp_path / "a"), progress=False)
    first = dp.train(tiny_config(tmp_path / "b", "train.steps=3"), progress=False)
    resumed = dp.train(tiny_config(tmp_path / "b"), resume=True, progress=False)
    assert first == resumed
    for key in ("model", "ema"):
        a, b = weights(straight, 6, key), weights(resumed, 6, key)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name


def test_existing_run_needs_resume_flag(tmp_path, run_cli):
    cfg_path = tiny_dit_config(tmp_path)
    args = ["train", str(cfg_path), "--set", f"output_dir={tmp_path / 'runs'}", "--set", "train.steps=2"]
    assert run_cli(*args)[0] == 0
    code, _, err = run_cli(*args)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1


def test_loss_falls_on_digits(tmp_path):
    cfg = tiny_config(tmp_path, "data={name: digits, image_size: 8}", "backbone.num_classes=10",
                      "backbone.patch_size=1", "train.steps=60", "train.batch_size=16", "train.log_every=10",
                      "train.ckpt_every=0", "diffusion.steps=1000")
    run_dir = dp.train(cfg, progress=False)
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses


def test_sample_writes_images_npz_and_grid(tmp_path, run_cli):
    run_dir = dp.train(tiny_config(tmp_path), progress=False)
    out = tmp_path / "samples"
    code, stdout, err = run_cli("sample", str(run_dir), "--num", "6", "--out", str(out), "--respacing", "ddim4")
    assert code == 0, err
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (6, 8, 8, 1) and data["arr_0"].dtype == np.uint8
    assert data["labels"].tolist() == [0, 1, 2, 3, 0, 1]
    assert len(list((out / "images").glob("0*.png"))) == 6 and (out / "grid.png").exists()
    info = json.loads((out / "samples.json").read_text())
    assert info["respacing"] == "ddim4" and info["weights"] == "ema"
    # a checkpoint file works as the source too, and the same seed gives the same images
    ckpt = run_dir / "checkpoints" / "0000006.pt"
    code, _, err = run_cli("sample", str(ckpt), "--num", "6", "--out", str(tmp_path / "again"), "--respacing", "ddim4")
    assert code == 0, err
    assert np.array_equal(np.load(tmp_path / "again" / "samples.npz")["arr_0"], data["arr_0"])


def test_sample_errors_are_one_line(tmp_path, run_cli):
    code, _, err = run_cli("sample", str(tmp_path / "missing"), "--num", "2")
    assert code == 2 and "no such run directory" in err
    run_dir = dp.train(tiny_config(tmp_path), progress=False)
    code, _, err = run_cli("sample", str(run_dir), "--num", "2", "--labels", "1", "9")
    assert code == 2 and "labels must lie in 0..3" in err


def test_torchrun_two_processes_on_cpu(tmp_path):
    cfg_path = tiny_dit_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "dtr_plugins", "train", str(cfg_path), "--set", f"output_dir={tmp_path / 'runs'}",
           "--set", "train.steps=4", "--set", "train.ckpt_every=0"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-8000:]
    run_dir = tmp_path / "runs" / "tiny"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert meta["ranks_in_sync"] is True  # every rank ended with bit-identical weights
    assert (run_dir / "checkpoints" / "0000004.pt").exists()


def test_eval_every_logs_metrics_over_steps(tmp_path):
    cfg = tiny_config(tmp_path, "data={name: digits, image_size: 8}", "backbone.num_classes=10",
                      "eval={every: 2, num_samples: 20, metrics: [fid, prc], feature_extractor: digits-classifier}",
                      "train.steps=4", "train.ckpt_every=0")
    run_dir = dp.train(cfg, progress=False)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert r["eval"]["frechet_inception_distance"] > 0 and r["eval"]["feature_extractor"] == "digits-classifier"
        assert r["eval"]["respacing"] == "ddim5" and r["eval"]["num_samples"] == 20
        assert 0 <= r["eval"]["class_accuracy"] <= 1
        assert 0 <= r["eval"]["precision"] <= 1 and r["eval"]["train_precision"] == "fp32"  # no key collision
    final = json.loads((run_dir / "eval.json").read_text())
    assert final["step"] == 4 and (run_dir / "samples" / "grid.png").exists()


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, run_cli):

    from dtr_plugins.weighting.base import LossWeighting

    class ExplodeAfter(LossWeighting):
        """Mean loss for three steps, then NaN."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, terms, t, diffusion):
            self.calls += 1
            loss = terms["loss"].mean()
            return loss if self.calls <= 3 else loss * float("nan")

    registry = registry_with("loss_weighting", "explode", ExplodeAfter)
    path = tiny_dit_config(tmp_path, loss_weighting={"name": "explode"})
    cfg = dp.load_config(path, overrides=[f"output_dir={tmp_path / 'runs'}"], registry=registry)
    with pytest.raises(dp.UserError, match="loss became NaN or inf before step 4; the last good checkpoint"):
        dp.train(cfg, registry=registry, progress=False)
    run_dir = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["0000003.pt"]


class Opaque:
    """An object that weights-only loading refuses (as arbitrary pickles are)."""


def test_sample_from_a_file_that_needs_unsafe_loading(tmp_path, run_cli):
    run_dir = dp.train(tiny_config(tmp_path), progress=False)
    ckpt = torch.load(run_dir / "checkpoints" / "0000006.pt", weights_only=True)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({**ckpt, "extra": Opaque()}, unsafe)
    code, _, err = run_cli("sample", str(unsafe), "--num", "2", "--out", str(tmp_path / "s"), "--respacing", "ddim2")
    assert code == 2 and "--allow-unsafe-load" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("sample", str(unsafe), "--num", "2", "--out", str(tmp_path / "s"), "--respacing", "ddim2",
                           "--allow-unsafe-load")
    assert code == 0, err
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape == (2, 8, 8, 1)


def test_trainer_applies_ema_with_warmup_decay(tmp_path):
    """Checkpoints after steps 1, 2, 3: ema_k = d * ema_(k-1) + (1 - d) * model_k with d = min(0.9999, k / (9 + k))."""
    run_dir = dp.train(tiny_config(tmp_path, "train.steps=3", "train.ckpt_every=1", "train.log_every=1"),
                       progress=False)
    for k in (2, 3):
        d = min(0.9999, k / (9 + k))  # the update after step k uses step index k - 1: (1 + (k-1)) / (10 + (k-1))
        previous, ema, model = weights(run_dir, k - 1, "ema"), weights(run_dir, k, "ema"), weights(run_dir, k, "model")
        moved = False
        for name in ema:
            torch.testing.assert_close(ema[name], d * previous[name] + (1 - d) * model[name], rtol=1e-5, atol=1e-6)
            moved |= not torch.equal(ema[name], previous[name])
        assert moved
