"""A fresh start after an attempt that left no checkpoint starts clean; --resume never lowers train.steps."""
import pytest

import dtr_plugins as dp
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.runs.rundir import RunDir
from dtr_plugins.training.trainer import Trainer

from ..conftest import tiny_dit_config
from .test_sample_out import TINY


def test_restart_without_checkpoint_and_resume_below_the_checkpoint_step(tmp_path, monkeypatch, run_cli):
    path = tiny_dit_config(tmp_path, "tiny.yaml", **TINY)
    cfg = dp.load_config(path, overrides=[f"output_dir={tmp_path}", "train.steps=4"])

    def interrupted(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # Ctrl-C before the first checkpoint, after 4 logged steps
        m.setattr(Trainer, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            dp.train(cfg, progress=False)
    rd = RunDir(tmp_path / "tiny")
    assert [r["step"] for r in rd.read_metrics() if "loss" in r] == [1, 2, 3, 4] and not rd.has_checkpoints()
    # the bug: a plain train appended, so metrics.jsonl held 1, 2, 3, 4, 1, 2, 3
    cfg3 = dp.load_config(path, overrides=[f"output_dir={tmp_path}", "train.steps=3"])
    with pytest.warns(UserWarning, match="stopped before its first checkpoint; starting afresh"):
        dp.train(cfg3, progress=False)
    assert [r["step"] for r in rd.read_metrics() if "loss" in r] == [1, 2, 3]
    assert [s["from_step"] for s in rd.read_meta()["segments"]] == [0]

    # the bug: --resume --set train.steps=2 on a run at step 3 exited 0, rewrote config.yaml to 2 steps and
    # added an empty 3 -> 3 segment to meta.json
    files = {p: p.read_bytes() for p in (rd.config_path, rd.meta_path, rd.metrics_path)}
    cfg2 = dp.load_config(path, overrides=[f"output_dir={tmp_path}", "train.steps=2"])
    with pytest.raises(ConfigError, match=r"train.steps: 2 is below the step of the checkpoint to resume \(3, "):
        dp.train(cfg2, resume=True, progress=False)
    code, _, err = run_cli("train", str(path), "--resume", "--set", f"output_dir={tmp_path}", "--set", "train.steps=2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "train.steps: 2 is below" in err, err
    assert {p: p.read_bytes() for p in files} == files


def test_python_api_refusals_name_the_python_argument_beside_the_flag(tmp_path):
    """``dp.train`` on a run with checkpoints says ``resume=True`` as well as ``--resume`` (a Python user has no
    flag)."""
    from dtr_plugins.core.errors import UserError

    cfg = dp.load_config(tiny_dit_config(tmp_path, "tiny.yaml", **TINY),
                         overrides=[f"output_dir={tmp_path}", "train.steps=2", "train.ckpt_every=2"])
    dp.train(cfg, progress=False)
    with pytest.raises(UserError, match=r"pass --resume \(Python: resume=True\) to continue it"):
        dp.train(cfg, progress=False)
