"""CLI options go through the same checks as the config values they stand for; NaN / infinity are refused
in float config fields. One line naming the option (or key) and what is allowed, exit 2, before any work."""
import pytest
import torch

from ..conftest import write
from .test_config import GOOD


@pytest.mark.parametrize("args,expected", [
    (["--cfg-scale", "nan"], "--cfg-scale: nan is not allowed; give a finite number >= 0"),
    (["--cfg-scale", "-1"], "--cfg-scale: -1.0 is not allowed; give a finite number >= 0"),
    (["--cfg-scale", "inf"], "--cfg-scale: inf is not allowed"),
    (["--device", "tpu"], "--device: unknown device 'tpu' (allowed: auto, cpu, cuda, cuda:N, mps)"),
    (["--device", "cuda"], "--device: 'cuda' but this machine has no CUDA device"),
    (["--device", "cuda:1"], "--device: 'cuda:1' but this machine has no CUDA device"),
    (["--threads", "0"], "--threads: 0 is not a thread count; give an integer of 1 or more"),
    (["--threads", "-2"], "--threads: -2 is not a thread count"),
])
def test_sample_options_are_checked_before_loading(tmp_path, run_cli, monkeypatch, args, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    # the source does not exist: the option is refused first, so nothing was loaded or sampled
    code, out, err = run_cli("sample", str(tmp_path / "run"), "-n", "2", "--out", str(tmp_path / "o"), *args)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"dtr: error: {err.strip().removeprefix('dtr: error: ')}"]
    assert expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_eval_threads_zero_is_one_line(tmp_path, run_cli):
    code, _, err = run_cli("eval", "--samples", str(tmp_path / "s.npz"), "--ref", "dataset:digits",
                           "--threads", "0", "--out", str(tmp_path / "e.json"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--threads: 0 is not a thread count" in err


@pytest.mark.parametrize("text,overrides,expected", [
    (GOOD.replace("train: {steps: 10,", "train: {lr: .inf, steps: 10,"), [],
     "train.lr: Input should be a finite number"),
    (GOOD, ["train.lr=inf"], "train.lr: Input should be a finite number"),
    (GOOD, ["train.ema_decay=nan"], "train.ema_decay: Input should be a finite number"),
    (GOOD, ["sample.cfg_scale=nan"], "sample.cfg_scale: Input should be a finite number"),
    (GOOD, ["sample.eta=.inf"], "sample.eta: Input should be a finite number"),
    (GOOD, ["routing.beta=nan"], "routing.beta: must be a finite number (got 'nan')"),
    (GOOD, ["routing.alpha=inf"], "routing.alpha: must be a finite number (got 'inf')"),
    (GOOD, ["routing.alpha=.inf"], "routing.alpha: must be a finite number (got inf)"),
])
def test_nonfinite_floats_are_refused(tmp_path, run_cli, text, overrides, expected):
    path = write(tmp_path / "c.yaml", text)
    code, out, err = run_cli("validate", "--config-only", str(path), *[a for o in overrides for a in ("--set", o)])
    assert code == 2 and out == "", out
    assert len(err.strip().splitlines()) == 1 and expected in err and "c.yaml" in err, err
