"""train.grad_accum_steps end to end: k micro-batches per optimizer step give the weights (model, EMA, learned
loss weights) of the single batch within 1e-6 relative in fp32; resume stays bit-exact; DDP (2 processes)
too; meta.json records what was applied."""
import json
import os
import subprocess
import sys

import pytest
import torch

import dtr_plugins as dp

from ..conftest import TINY_DIT, tiny_dit_config
from .test_train import tiny_config


def checkpoint(run_dir, step):
    return torch.load(run_dir / "checkpoints" / f"{step:07d}.pt", weights_only=True)


def max_rel_err(a: dict, b: dict, per_tensor: bool = True) -> float:
    """max over floating tensors of max |a - b| / max |a| (per tensor), or over the whole state / its largest
    value (``per_tensor`` False)."""
    assert a.keys() == b.keys()
    floats = [name for name, x in a.items() if x.is_floating_point()]
    diffs = {name: (a[name] - b[name]).abs().max().item() for name in floats}
    scales = {name: a[name].abs().max().item() or 1.0 for name in floats}
    if per_tensor:
        return max((diffs[name] / scales[name] for name in floats), default=0.0)
    return max(diffs.values(), default=0.0) / max(scales.values(), default=1.0)


def losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("weighting", ["constant", "ant_uw"])
def test_micro_batches_give_the_weights_of_one_batch(tmp_path, weighting):
    """k = 1, 2 (with activation checkpointing) and 4 at a global batch of 8: weights after 1 and 3 steps
    (ANT-UW, 4 clusters: k = 1 and 4, each micro-batch then holds a single cluster's timesteps)."""
    extra = ["train.steps=3", "train.ckpt_every=1", "train.log_every=1"]
    ks = (1, 2, 4)
    if weighting == "ant_uw":
        extra.append("loss_weighting={name: ant_uw, k: 4}")
        ks = (1, 4)
    runs = {k: dp.train(tiny_config(tmp_path / f"k{k}", *extra, f"train.grad_accum_steps={k}",
                                    f"train.activation_checkpointing={k == 2}"), progress=False)
            for k in ks}
    for k in ks[1:]:
        for step in (1, 3):
            a, b = checkpoint(runs[1], step), checkpoint(runs[k], step)
            for key in ("model", "ema", "loss_weighting"):
                # step 1: every tensor within 1e-6 of itself. Later steps: AdamW's update is ~lr whatever the
                # gradient's size, so DiT's zero-initialised adaLN / final layers, whose first gradients are
                # near 0 with rounding-level differences, differ by up to ~1e-5 of their (tiny) values; the
                # state as a whole stays within 1e-6 of its scale
                assert max_rel_err(a[key], b[key], per_tensor=step == 1) < 1e-6, (k, step, key)
            if weighting == "ant_uw":  # the learned log-variances moved, and moved alike
                assert b["loss_weighting"]["log_vars"].abs().max() > 0
        assert losses(runs[k]) == pytest.approx(losses(runs[1]), rel=1e-6)
        meta = json.loads((runs[k] / "meta.json").read_text())
        assert meta["compute"]["grad_accum_steps"] == k and meta["compute"]["micro_batch_size"] == 8 // k
        assert meta["compute"]["activation_checkpointing"]["applied"] is (k == 2)
        assert meta["compute"]["tf32"] == {"applied": False, "why": "device cpu: TF32 is a CUDA (Ampere or newer) "
                                                                    "mode, not applicable"}
        assert meta["segments"][-1]["compute"] == meta["compute"]
    if weighting == "ant_uw":
        return
    # the micro-batches really differ from the batch: a plain 4-image step is not the 8-image one
    assert max_rel_err(checkpoint(runs[1], 1)["model"], checkpoint(dp.train(tiny_config(
        tmp_path / "b4", *extra, "train.batch_size=4"), progress=False), 1)["model"]) > 1e-4


def test_resume_with_accumulation_is_bit_exact_and_may_change_k(tmp_path):
    straight = dp.train(tiny_config(tmp_path / "a", "train.grad_accum_steps=2", "train.tf32=true"), progress=False)
    first = dp.train(tiny_config(tmp_path / "b", "train.grad_accum_steps=2", "train.tf32=true", "train.steps=3"),
                     progress=False)
    resumed = dp.train(tiny_config(tmp_path / "b", "train.grad_accum_steps=2", "train.tf32=true"), resume=True,
                       progress=False)
    assert first == resumed
    for key in ("model", "ema", "optimizer"):
        a, b = checkpoint(straight, 6)[key], checkpoint(resumed, 6)[key]
        if key == "optimizer":
            a, b = {i: s["exp_avg"] for i, s in a["state"].items()}, {i: s["exp_avg"] for i, s in b["state"].items()}
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
    assert losses(resumed)[-1] == losses(straight)[-1]  # the window of steps 5-6
    meta = json.loads((resumed / "meta.json").read_text())
    assert meta["compute"]["tf32"]["applied"] is False and "(requested)" in meta["compute"]["tf32"]["why"]
    # a run moved to a machine with fewer ranks may accumulate more: k is not part of the run's identity
    more = dp.train(tiny_config(tmp_path / "b", "train.grad_accum_steps=4", "train.steps=8"), resume=True,
                    progress=False)
    meta = json.loads((more / "meta.json").read_text())
    assert [s["compute"]["grad_accum_steps"] for s in meta["segments"]] == [2, 2, 4]


def test_world_size_times_k_must_divide_the_batch():
    """batch 8 over 2 ranks is 4 per rank; k = 8 passes validation (8 | 8) but not the world size: the one line,
    raised before the run directory is touched."""
    import contextlib

    from dtr_plugins.core.config import config_from_dict
    from dtr_plugins.core.distributed import Dist
    from dtr_plugins.core.errors import ConfigError
    from dtr_plugins.training.train import _compute_settings

    cfg = config_from_dict({**TINY_DIT, "train": {"batch_size": 8, "grad_accum_steps": 8}})
    with pytest.raises(ConfigError, match="^train.batch_size: 8 is not divisible by world size 2 x "
                                          "train.grad_accum_steps 8$"), contextlib.ExitStack() as held:
        _compute_settings(cfg, Dist(rank=0, world_size=2), held)
    with contextlib.ExitStack() as held:
        assert _compute_settings(cfg, Dist(), held)["micro_batch_size"] == 1


def test_two_processes_with_accumulation_equal_two_processes_without(tmp_path):
    """Under DDP (2 ranks, gloo) k = 2 micro-batches per rank, synced once per step, give the k = 1 weights."""
    cfg_path = tiny_dit_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {}
    for k in (1, 2):  # --standalone: torchrun binds its own free port (no race with another test's gloo ports)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               "-m", "dtr_plugins", "train", str(cfg_path), "--set", f"output_dir={tmp_path / f'k{k}'}",
               "--set", "train.steps=3", "--set", "train.ckpt_every=0", "--set", f"train.grad_accum_steps={k}"]
        procs[k] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for proc in procs.values():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    runs = {k: tmp_path / f"k{k}" / "tiny" for k in procs}
    meta = json.loads((runs[2] / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_in_sync"] is True and meta["compute"]["micro_batch_size"] == 2
    for key in ("model", "ema"):
        assert max_rel_err(checkpoint(runs[1], 3)[key], checkpoint(runs[2], 3)[key], per_tensor=False) < 1e-6
