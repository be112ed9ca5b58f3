"""Trustworthy runs end to end (issue #12): resume identity, meta segments, metrics after a kill, lost final
evaluation redone, divergence in the weights, the run lock from the CLI, exact resume with augmentation."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import dtr_plugins as dp

from ..conftest import registry_with, tiny_dit_config


def tiny_config(tmp_path, *overrides, changes=None, registry=None):
    path = tiny_dit_config(tmp_path, **(changes or {}))
    return dp.load_config(path, overrides=[f"output_dir={tmp_path / 'runs'}", *overrides], registry=registry)


def steps_logged(run_dir):
    """Steps of the training records (held-out loss records have no ``loss`` key)."""
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["step"] for r in records if "loss" in r]


def test_resume_with_another_routing_is_refused_naming_the_key(tmp_path, run_cli):
    cfg_path = tiny_dit_config(tmp_path)
    base = ["train", str(cfg_path), "--set", f"output_dir={tmp_path / 'runs'}"]
    assert run_cli(*base, "--set", "routing.beta=0.8", "--set", "train.steps=20",
                   "--set", "train.log_every=10", "--set", "train.ckpt_every=0")[0] == 0
    code, _, err = run_cli(*base, "--resume", "--set", "routing.beta=0.5", "--set", "train.steps=40")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "routing.beta: 0.5 differs from 0.8" in err and "0000020.pt" in err
    run_dir = tmp_path / "runs" / "tiny"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["routing"]["beta"] == 0.8  # untouched
    assert not (run_dir / "checkpoints" / "0000040.pt").exists()
    # the keys that may change on resume do
    code, _, err = run_cli(*base, "--resume", "--set", "routing.beta=0.8", "--set", "train.steps=24",
                           "--set", "train.log_every=4", "--set", "eval.num_samples=5")
    assert code == 0, err
    meta = json.loads((run_dir / "meta.json").read_text())
    assert [(s["from_step"], s["to_step"]) for s in meta["segments"]] == [(0, 20), (20, 24)]
    for segment in meta["segments"]:
        assert segment["world_size"] == 1 and segment["device"].startswith("cpu") and segment["finished"]
        assert "git_commit" in segment and segment["started"] <= segment["finished"]
    ckpt = torch.load(run_dir / "checkpoints" / "0000024.pt", weights_only=True)
    assert ckpt["config_fingerprint"] == meta["config_fingerprint"]
    assert "beta=0.8" in ckpt["routing"]["strategy"] and len(ckpt["routing"]["masks_sha256"]) == 64


def test_old_checkpoint_without_fingerprint_resumes_with_a_warning(tmp_path):
    run_dir = dp.train(tiny_config(tmp_path, "train.steps=3"), progress=False)
    path = run_dir / "checkpoints" / "0000003.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config_fingerprint"], ckpt["routing"]
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match="no config fingerprint"):
        dp.train(tiny_config(tmp_path), resume=True, progress=False)
    assert (run_dir / "checkpoints" / "0000006.pt").exists()


def test_checkpoint_from_before_a_key_existed_resumes(tmp_path):
    """A checkpoint written by a version without a config key (here ``train.timestep_buckets``) resumes: the key
    takes its default, which keeps the earlier behaviour; a real change is still refused."""
    from dtr_plugins.core.errors import ConfigError
    from dtr_plugins.core.fingerprint import weights_fingerprint

    run_dir = dp.train(tiny_config(tmp_path, "train.steps=3"), progress=False)
    path = run_dir / "checkpoints" / "0000003.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["train"]["timestep_buckets"]
    ckpt["config_fingerprint"] = weights_fingerprint(ckpt["config"])
    torch.save(ckpt, path)
    with pytest.raises(ConfigError, match=r"routing\.beta: 0\.5 differs from 0\.8"):
        dp.train(tiny_config(tmp_path, "routing.beta=0.5"), resume=True, progress=False)
    dp.train(tiny_config(tmp_path), resume=True, progress=False)
    assert (run_dir / "checkpoints" / "0000006.pt").exists()


def test_kill_then_resume_records_each_step_once(tmp_path):
    """Checkpoint at 6, logged 8 and 10, killed before the next checkpoint: resuming to 12 logs 2..12 once each."""
    run_dir = dp.train(tiny_config(tmp_path, "train.steps=10", "train.ckpt_every=6"), progress=False)
    first = {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "loss" in r}
    (run_dir / "checkpoints" / "0000010.pt").unlink()  # what the kill lost
    dp.train(tiny_config(tmp_path, "train.steps=12", "train.ckpt_every=6"), resume=True, progress=False)
    assert steps_logged(run_dir) == [2, 4, 6, 8, 10, 12]
    again = {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "loss" in r}
    assert again[8] == first[8] and again[10] == first[10]  # the redone steps are the same steps


def test_resume_at_the_final_step_redoes_a_lost_final_evaluation(tmp_path, run_cli):
    cfg_path = tiny_dit_config(tmp_path)
    sets = [f"output_dir={tmp_path / 'runs'}", "data={name: digits, image_size: 8}", "backbone.num_classes=10",
            "train.steps=4", "train.ckpt_every=0",
            "eval={at_end: true, num_samples: 20, metrics: [fid], feature_extractor: digits-classifier}"]
    args = ["train", str(cfg_path)] + [a for s in sets for a in ("--set", s)]
    assert run_cli(*args)[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    cfg = dp.load_config(cfg_path, overrides=sets)
    assert dp_run(run_dir).missing_outputs(cfg) == []
    (run_dir / "eval.json").unlink()  # interrupted during the final evaluation
    for p in (run_dir / "samples").iterdir():
        p.unlink()
    assert dp_run(run_dir).missing_outputs(cfg) == ["eval.json", "samples/samples.npz"]
    code, out, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert "redoing the missing eval.json, samples/samples.npz" in out
    final = json.loads((run_dir / "eval.json").read_text())
    assert final["step"] == 4 and final["frechet_inception_distance"] > 0
    evals = [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    assert evals == [4]  # the record of the interrupted evaluation was replaced, not repeated
    assert dp_run(run_dir).missing_outputs(cfg) == []


def dp_run(path):
    from dtr_plugins.runs.rundir import RunDir

    return RunDir(path)


def test_nan_gradients_with_a_finite_loss_never_reach_a_checkpoint(tmp_path, run_cli):
    from dtr_plugins.weighting.base import LossWeighting

    class PoisonGradsAfter(LossWeighting):
        """Mean loss; on the sixth step plus sqrt(0 * loss): the value stays finite, the gradient is NaN (so the
        weights saved after that step would be NaN while every logged loss is finite)."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, terms, t, diffusion):
            self.calls += 1
            loss = terms["loss"].mean()
            return loss if self.calls != 6 else loss + torch.sqrt(terms["loss"] * 0).sum()

    registry = registry_with("loss_weighting", "poison", PoisonGradsAfter)
    cfg = tiny_config(tmp_path, changes={"loss_weighting": {"name": "poison"}}, registry=registry)
    with pytest.raises(dp.UserError, match=r"weights became NaN or inf before step 6 \(\d+ tensors, first model\."):
        dp.train(cfg, registry=registry, progress=False)
    run_dir = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["0000003.pt"]
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(np.isfinite(losses))  # the loss alone never showed it


def test_sampling_refuses_non_finite_weights(tmp_path, run_cli):
    run_dir = dp.train(tiny_config(tmp_path), progress=False)
    ckpt = torch.load(run_dir / "checkpoints" / "0000006.pt", weights_only=True)
    name = next(k for k, v in ckpt["ema"].items() if v.is_floating_point())
    ckpt["ema"][name] = torch.full_like(ckpt["ema"][name], float("nan"))
    bad = run_dir / "checkpoints" / "0000009.pt"
    torch.save(ckpt, bad)
    code, _, err = run_cli("sample", str(run_dir), "--num", "2", "--out", str(tmp_path / "s"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(bad) in err and "NaN or inf" in err and name in err
    assert not (tmp_path / "s").exists()


HOLD = """\
import sys, time
from dtr_plugins.runs.rundir import RunDir
with RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_train_on_a_run_directory_in_use_is_refused(tmp_path, run_cli):
    run_dir = tmp_path / "runs" / "tiny"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        cfg_path = tiny_dit_config(tmp_path)
        code, _, err = run_cli("train", str(cfg_path), "--set", f"output_dir={tmp_path / 'runs'}")
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"in use by pid {holder.pid}" in err, err
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run_cli("train", str(cfg_path), "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 0, err


def image_folder(root):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(6):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_identical_with_random_flip(tmp_path, workers):
    folder = image_folder(tmp_path / "images")
    overrides = [f"data={{name: image_folder, path: {folder}, image_size: 8, random_flip: true}}",
                 "backbone.in_channels=3", "backbone.num_classes=2", f"train.num_workers={workers}"]
    straight = dp.train(tiny_config(tmp_path / "a", *overrides), progress=False)
    dp.train(tiny_config(tmp_path / "b", *overrides, "train.steps=3"), progress=False)
    resumed = dp.train(tiny_config(tmp_path / "b", *overrides), resume=True, progress=False)
    for key in ("model", "ema"):
        a = torch.load(straight / "checkpoints" / "0000006.pt", weights_only=True)[key]
        b = torch.load(resumed / "checkpoints" / "0000006.pt", weights_only=True)[key]
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)


def test_refused_resume_of_a_new_folder_leaves_nothing_behind(tmp_path, run_cli):
    cfg_path = tiny_dit_config(tmp_path)
    code, _, err = run_cli("train", str(cfg_path), "--set", f"output_dir={tmp_path / 'runs'}", "--resume")
    assert code == 2 and "--resume given but there is no checkpoint" in err
    assert not (tmp_path / "runs" / "tiny").exists()
