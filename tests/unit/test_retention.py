"""train.keep_last: prune_checkpoints keeps the newest complete checkpoints and never the only good one."""
import pytest
import torch

from dtr_plugins.core.checkpoint import save_checkpoint
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.runs.retention import is_complete_checkpoint, list_checkpoints, prune_checkpoints


def _ckpt(folder, step):
    return save_checkpoint(folder / f"{step:07d}.pt", step=step, model={"w": torch.full((2,), float(step))})


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_keeps_the_newest_n_and_deletes_oldest_first(tmp_path):
    for step in (100, 200, 300, 400):
        _ckpt(tmp_path, step)
    deleted = prune_checkpoints(tmp_path, 2)
    assert [p.name for p in deleted] == ["0000100.pt", "0000200.pt"]
    assert _names(tmp_path) == ["0000300.pt", "0000400.pt"]
    assert torch.load(tmp_path / "0000400.pt", weights_only=True)["step"] == 400
    assert prune_checkpoints(tmp_path, 2) == []


def test_keep_all_by_default(tmp_path):
    for step in (1, 2, 3):
        _ckpt(tmp_path, step)
    assert prune_checkpoints(tmp_path, None) == [] and prune_checkpoints(tmp_path, 0) == []
    assert len(_names(tmp_path)) == 3
    with pytest.raises(ConfigError, match="train.keep_last: -1"):
        prune_checkpoints(tmp_path, -1)


def test_never_deletes_the_only_good_checkpoint(tmp_path):
    _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 20)
    (tmp_path / "0000030.pt").write_bytes(b"PK\x03\x04 truncated")  # newest, but damaged
    (tmp_path / "0000040.pt").write_bytes(b"")                      # newest, empty
    assert not is_complete_checkpoint(tmp_path / "0000030.pt") and is_complete_checkpoint(tmp_path / "0000020.pt")
    deleted = prune_checkpoints(tmp_path, 1)
    assert [p.name for p in deleted] == ["0000010.pt"]
    # the last good one stays; damaged files are neither counted nor deleted
    assert _names(tmp_path) == ["0000020.pt", "0000030.pt", "0000040.pt"]
    assert prune_checkpoints(tmp_path, 1) == []


def test_steps_sort_numerically_and_other_files_are_ignored(tmp_path):
    for step in (999, 1000):
        save_checkpoint(tmp_path / f"{step}.pt", step=step, model={"w": torch.zeros(1)})
    (tmp_path / ".0001001.pt.abc.tmp").write_bytes(b"partial")  # an unfinished atomic write
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["999.pt", "1000.pt"]
    assert [p.name for p in prune_checkpoints(tmp_path, 1)] == ["999.pt"]
    assert _names(tmp_path) == [".0001001.pt.abc.tmp", "1000.pt", "notes.txt"]
    assert list_checkpoints(tmp_path / "missing") == [] and prune_checkpoints(tmp_path / "missing", 1) == []
