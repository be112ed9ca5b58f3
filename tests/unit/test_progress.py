"""Progress: the sampling bar counts solver steps, the training bar leaves evaluations out, the suite's
progress line says the newest step a run has recorded."""
import json
import logging
import subprocess
import time

import pytest
import torch
import tqdm.auto

import dtr_plugins as dp
from dtr_plugins.core.config import config_from_dict
from dtr_plugins.core.contracts import RunSpec
from dtr_plugins.core.log import CAPTURED_ENV
from dtr_plugins.core.sampling_settings import SamplingOverrides, SamplingSettings
from dtr_plugins.launchers import local
from dtr_plugins.runs.rundir import RunDir
from dtr_plugins.sampling.sample import generate
from dtr_plugins.training.trainer import Trainer

from ..conftest import tiny_dit_config, write


@pytest.fixture
def bars(monkeypatch):
    """Every tqdm.auto bar made during the test, with its count, total and times when it closed."""
    made = []

    class Recorded(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False  # a live bar (its clock runs), drawn into a throwaway stream
            kwargs["file"] = open("/dev/null", "w")  # noqa: SIM115  # closed with the bar
            super().__init__(*args, **kwargs)
            self.opened = time.time()
            made.append(self)

        def close(self):
            if not hasattr(self, "closed_at"):
                self.closed_at = time.time()
                self.at_close = dict(self.format_dict)
            fp = self.fp
            super().close()
            fp.close()

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    return made


class _Toy(torch.nn.Module):
    num_classes, null_class, in_channels, input_size = 3, 3, 1, 4

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t, y=None):
        return x * 0.1 * self.w


def _settings(process: dict, sample: dict, num: int) -> tuple[SamplingSettings, object]:
    cfg = config_from_dict({"name": "t", "backbone": {"name": "dit", "size": "S/2"}, "data": {"name": "synthetic"},
                            "diffusion": process, "sample": sample})
    return SamplingSettings.from_config(cfg, SamplingOverrides(num=num)), dp.build_diffusion(cfg)


def test_heun_bar_counts_25_steps_per_batch_not_its_50_network_calls(bars):
    settings, diffusion = _settings({"name": "flow_matching"}, {"sampler": "heun", "respacing": "25",
                                                                "batch_size": 4}, num=8)
    generate(_Toy(), diffusion, settings, progress=True)
    (bar,) = [b for b in bars if str(b.desc).startswith("sampling")]
    assert bar.at_close["total"] == 25 * 2 and bar.at_close["n"] == 25 * 2  # 25 steps x 2 batches


def test_a_single_batch_has_its_total_from_the_start(bars, monkeypatch):
    settings, diffusion = _settings({"name": "gaussian", "learn_sigma": False},
                                    {"sampler": "ddim", "respacing": "ddim7", "batch_size": 8}, num=5)
    totals = []
    model = _Toy()
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: (totals.append(bars[-1].total), forward(*a, **k))[1])
    generate(model, diffusion, settings, progress=True)
    # 7 steps under the bar, then 7 more for the one image whose FLOPs are counted (no bar of its own)
    assert totals == [7] * 14 and bars[-1].at_close["n"] == 7


def test_the_training_bar_leaves_evaluations_out_of_its_time(tmp_path, bars, monkeypatch):
    pause = 1.0
    monkeypatch.setattr(Trainer, "evaluate", lambda self, final: time.sleep(pause))
    evaluation = {"every": 3, "at_end": False, "feature_extractor": "digits-classifier"}
    cfg = dp.load_config(tiny_dit_config(tmp_path, eval=evaluation, data={"name": "digits", "image_size": 8},
                                         backbone={"num_classes": 10}), overrides=[f"output_dir={tmp_path / 'runs'}"])
    dp.train(cfg, progress=True)
    (bar,) = [b for b in bars if b.desc == "tiny"]
    wall = bar.closed_at - bar.opened
    assert bar.at_close["n"] == 6
    assert wall - bar.at_close["elapsed"] >= 2 * pause - 0.05  # both evaluations (steps 3 and 6) left out
    assert bar.at_close["elapsed"] < wall - 1.9


def test_the_suite_progress_line_says_the_newest_step_the_run_recorded(tmp_path, monkeypatch, caplog):
    """A long evaluation record (over the 8 KiB the line once read) is the newest one: its step counts."""
    caplog.set_level(logging.INFO, logger="dtr_plugins")
    run = RunSpec("r", tmp_path / "r", write(tmp_path / "r.yaml", "train: {steps: 20}\n"))
    rd = RunDir(run.run_dir)
    written = iter([[{"step": 3, "loss": 1.0}], [{"step": 7, "eval": {"per_class": ["x" * 100] * 200}}],
                    [{"step": 9, "loss": 0.5}]])
    seen_env = {}

    class FakeChild:
        returncode = 0

        def __init__(self, cmd, stdout, stderr, env):
            seen_env.update(env)

        def wait(self, timeout=None):  # the run records the next batch of lines, then a progress line is due
            records = next(written, None)
            if records is None:
                return 0
            for record in records:
                rd.append_metrics(record)
            raise subprocess.TimeoutExpired("dtr", timeout)

    monkeypatch.setattr(local.subprocess, "Popen", FakeChild)
    status = local.run_training(run, gpu=None, progress_every=0.01)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("running")]
    assert [line.split(": ")[1].split(" (")[0] for line in lines] == ["step 3/20", "step 7/20", "step 9/20"]
    assert status["state"] == "done"
    assert seen_env[CAPTURED_ENV] == str(rd.log_path)  # the child leaves train.log to the launcher


def test_last_step_skips_an_unfinished_line(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.last_step() is None
    rd.append_metrics({"step": 4})
    with open(rd.metrics_path, "a") as f:
        f.write(json.dumps({"step": 5, "loss": 1})[:-3])  # being written
    assert rd.last_step() == 4
