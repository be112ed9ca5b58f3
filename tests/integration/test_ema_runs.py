"""Power EMA through ``dtr train``: several profiles, snapshots, SIGKILL + resume bit-exact, ``dtr ema`` post-hoc
reconstruction and ``dtr sample`` of its file; the applied EMA and timestep sampler in meta.json."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

import dtr_plugins as dp

from ..conftest import tiny_dit_config

POWER = {"name": "power", "sigma_rels": [0.1, 0.05], "snapshot_every": 2}

#: ``dtr train`` that SIGKILLs itself right after writing the step-3 checkpoint (a crash mid-run)
KILLED_AFTER_STEP_3 = """\
import os, signal, sys
from dtr_plugins.cli import main
from dtr_plugins.training.trainer import Trainer
save = Trainer.save
def save_then_die(self):
    save(self)
    if self.state.step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
Trainer.save = save_then_die
sys.exit(main(["train", sys.argv[1], "--set", "output_dir=" + sys.argv[2]]))
"""


def load(path):
    return torch.load(path, weights_only=True)


def assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for name in a:
        assert torch.equal(a[name], b[name]), f"{what}: {name}"


def test_power_ema_survives_sigkill_and_posthoc_weights_sample(tmp_path, run_cli):
    cfg_path = tiny_dit_config(tmp_path, train={"ema_warmup": None}, ema=POWER,
                               timesteps={"name": "logit_normal", "mean": 0.5})
    straight = dp.train(dp.load_config(cfg_path, overrides=[f"output_dir={tmp_path / 'a'}"]), progress=False)
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_STEP_3, str(cfg_path), str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=600)
    resumed = tmp_path / "b" / "tiny"
    assert killed.returncode == -9, killed.stderr
    assert (resumed / "checkpoints" / "0000003.pt").exists() and not (resumed / "checkpoints" / "0000006.pt").exists()
    code, _, err = run_cli("train", str(cfg_path), "--set", f"output_dir={tmp_path / 'b'}", "--resume")
    assert code == 0, err

    a, b = load(straight / "checkpoints" / "0000006.pt"), load(resumed / "checkpoints" / "0000006.pt")
    for key in ("model", "ema"):
        assert_same(a[key], b[key], key)
    assert list(a["ema_profiles"]) == ["sigma0.050"]  # the first profile (0.1) is the checkpoint's ema
    assert_same(a["ema_profiles"]["sigma0.050"], b["ema_profiles"]["sigma0.050"], "ema_profiles")
    assert a["ema_profiles"]["sigma0.050"].keys() == a["model"].keys()  # every parameter and buffer is averaged
    names = sorted(p.name for p in (straight / "ema").iterdir())
    assert names == [f"snapshot-{s:07d}-{p}.pt" for s in (2, 4, 6) for p in ("sigma0.050", "sigma0.100")]
    for name in names:
        assert_same(load(straight / "ema" / name)["ema"], load(resumed / "ema" / name)["ema"], name)
    assert_same(load(straight / "ema" / "snapshot-0000006-sigma0.100.pt")["ema"], a["ema"], "snapshot = ema")

    meta = json.loads((resumed / "meta.json").read_text())
    assert meta["ema"]["name"] == "power" and meta["ema"]["applied"] is True
    assert meta["ema"]["profiles"] == ["sigma0.100", "sigma0.050"] and meta["ema"]["snapshot_every"] == 2
    assert meta["timesteps"] == {"sampler": "logit_normal(T=100, mean=0.5, std=1)", "continuous": False,
                                 "from": "timesteps"}

    # a tracked width is in the span of the snapshots: post-hoc gives it back; another width gives new weights
    code, out, err = run_cli("ema", str(resumed), "--sigma-rel", "0.1", "0.07")
    assert code == 0, err
    tracked, new = resumed / "ema" / "posthoc-0000006-sigma0.100.pt", resumed / "ema" / "posthoc-0000006-sigma0.070.pt"
    assert str(tracked) in out and str(new) in out
    rebuilt = load(tracked)
    for name, value in a["ema"].items():
        torch.testing.assert_close(rebuilt["ema"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    other = load(new)
    assert other["ema_profile"]["sigma_rel"] == 0.07 and len(other["ema_profile"]["snapshots"]) == 6
    assert abs(sum(other["ema_profile"]["coefficients"]) - 1) < 1e-9
    differs = [n for n, v in other["ema"].items() if v.is_floating_point() and not torch.allclose(v, a["ema"][n])]
    assert differs  # a width not tracked: weights of its own

    code, _, err = run_cli("sample", str(new), "-n", "4")
    assert code == 0, err
    out_dir = resumed / "samples" / "step0000006-ddim5-cfg1.0-seed0-n4-ema-posthoc-sigma0.070"
    info = json.loads((out_dir / "samples.json").read_text())
    assert info["ema_profile"] == "posthoc-sigma0.070" and info["weights"] == "ema" and info["checkpoint"] == str(new)


def test_dtr_ema_refuses_a_run_without_power_snapshots_in_one_line(tmp_path, run_cli):
    run = dp.train(dp.load_config(tiny_dit_config(tmp_path), overrides=[f"output_dir={tmp_path}", "train.steps=2"]),
                   progress=False)
    code, _, err = run_cli("ema", str(run), "--sigma-rel", "0.05")
    assert code == 2 and "no power-EMA snapshots" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("ema", str(run), "--sigma-rel", "0.5")
    assert code == 2 and "--sigma-rel: 0.5 is outside (0, 0.2886]" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("ema", str(run / "checkpoints" / "0000002.pt"), "--sigma-rel", "0.05")
    assert code == 2 and "not a run directory" in err and len(err.strip().splitlines()) == 1, err
    assert not (run / "ema").exists()
