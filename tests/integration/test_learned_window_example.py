"""The example third-party learned strategy (examples/dtr-learned-window-example) installs into a fresh
venv, is listed with its distribution, and its own config trains, evaluates and samples through ``dtr``."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from ..conftest import ROOT, venv_with_example

EXAMPLE = ROOT / "examples" / "dtr-learned-window-example"
CONFIG = EXAMPLE / "learned_window_digits.yaml"
QUICK = ["train.steps=4", "train.batch_size=16", "train.log_every=2", "train.ckpt_every=4",
         "backbone.hidden_size=32", "backbone.depth=2", "backbone.num_heads=2", "sample.respacing=ddim5",
         "sample.num_samples=20", "sample.batch_size=20", "eval.num_samples=20"]


def test_example_learned_strategy_installs_and_trains_through_dtr(tmp_path):
    py = str(venv_with_example(tmp_path, EXAMPLE))

    def dtr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([py, "-m", "dtr_plugins", *args], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path)

    listed = dtr("plugins")
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if " learned_window " in ln)
    assert "dtr-learned-window-example" in line and "0.1.0" in line

    bad = dtr("validate", str(CONFIG), "--set", "routing.smooth_weight=-1")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
    assert "routing.smooth_weight" in bad.stderr and "greater than or equal to 0" in bad.stderr

    sets = [a for kv in [*QUICK, f"output_dir={tmp_path / 'runs'}"] for a in ("--set", kv)]
    trained = dtr("train", str(CONFIG), *sets)
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "runs" / "dit-digits-learned-window"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4] and all(r["aux/smooth"] > 0 for r in steps)
    evals = [r["eval"] for r in records if "eval" in r]  # the package's offline eval section ran
    assert len(evals) == 1 and evals[0]["feature_extractor"] == "digits-classifier"
    assert evals[0]["num_samples"] == 20 and evals[0]["frechet_inception_distance"] > 0
    ckpt = torch.load(run / "checkpoints" / "0000004.pt", weights_only=True)
    assert sorted(k for k in ckpt["ema"] if k.startswith("routing.")) == [
        "routing.learned.logits.0", "routing.learned.logits.1"]

    sampled = dtr("sample", str(run), "--num", "4")
    assert sampled.returncode == 0, sampled.stderr
    folder = Path(sampled.stdout.split("samples: ", 1)[1].strip())
    assert json.loads((folder / "samples.json").read_text())["learned_routing"] == "task tables"
