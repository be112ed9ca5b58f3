"""train.keep_last through a real run: the newest checkpoints remain, and the run still resumes exactly."""
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.core.errors import ConfigError

from ..conftest import tiny_dit_config


def _cfg(root, *overrides):
    return dp.load_config(tiny_dit_config(root, "keep.yaml", name="keep",
                                          train={"steps": 8, "log_every": 4, "ckpt_every": 2}),
                          overrides=[f"output_dir={root / 'runs'}", *overrides])


def _names(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_keep_last_keeps_the_newest_and_the_run_resumes(tmp_path):
    run = dp.train(_cfg(tmp_path / "a", "train.keep_last=2"), progress=False)
    assert _names(run) == ["0000006.pt", "0000008.pt"]  # 2 and 4 pruned after later saves
    assert torch.load(run / "checkpoints" / "0000008.pt", weights_only=True)["step"] == 8

    # resume to step 12 keeping 3 (keep_last may change on resume): continues from step 8
    resumed = dp.train(_cfg(tmp_path / "a", "train.keep_last=3", "train.steps=12"), resume=True, progress=False)
    assert resumed == run and _names(run) == ["0000008.pt", "0000010.pt", "0000012.pt"]
    straight = dp.train(_cfg(tmp_path / "b", "train.steps=12"), progress=False)  # keep all (the default)
    assert _names(straight) == [f"{s:07d}.pt" for s in (2, 4, 6, 8, 10, 12)]
    a = torch.load(straight / "checkpoints" / "0000012.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "0000012.pt", weights_only=True)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def test_keep_last_below_one_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="keep_last"):
        _cfg(tmp_path, "train.keep_last=0")
