"""One-line messages that name the option the user typed and the file at fault, never an internal temp path,
an option that does not exist, or a bare OS error; checked before the work they would waste."""
import pytest
import torch

from dtr_plugins.core.checkpoint import read_checkpoint
from dtr_plugins.core.errors import CheckpointError, UserError
from dtr_plugins.extractors import builtin as feature_extractors

from ..conftest import write
from .test_config import GOOD


def test_masks_out_is_a_folder_or_under_a_file(tmp_path, run_cli):
    cfg = write(tmp_path / "c.yaml", GOOD)
    (tmp_path / "dir").mkdir()
    afile = write(tmp_path / "afile", "x")
    # the bug: "/tmp/.emptydir.7ae1a7us.tmp: is a folder" and "FILE: already exists; choose another output_dir"
    for out, expected in ((tmp_path / "dir", f"--out {tmp_path / 'dir'}: is a folder; give the path of the image"),
                          (afile / "x.png", f"--out {afile / 'x.png'}: {afile} is a file, not a folder")):
        code, _, err = run_cli("masks", str(cfg), "--out", str(out))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"dtr: error: {expected}") and ".tmp" not in err and "output_dir" not in err
    assert afile.read_text() == "x" and list((tmp_path / "dir").iterdir()) == []


def test_eval_out_folder_is_refused_before_evaluating(tmp_path, run_cli):
    (tmp_path / "dir").mkdir()
    # the samples do not exist: the --out check comes first (the bug: after the whole evaluation)
    code, _, err = run_cli("eval", "--samples", str(tmp_path / "none.npz"), "--ref", "dataset:digits",
                           "--out", str(tmp_path / "dir"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--out {tmp_path / 'dir'}: is a folder; give the path of the JSON file" in err and ".tmp" not in err


@pytest.mark.parametrize("keep", [-10, 0.5, 100])
def test_truncated_checkpoint_says_so(tmp_path, keep):
    path = tmp_path / "c.pt"
    torch.save({"model": {"w": torch.zeros(2000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    text = str(info.value)
    # the bug (a file cut near its end): "cannot read checkpoint: Invalid argument"
    assert text.startswith((f"{path}: truncated or corrupt checkpoint file", f"{path}: corrupt or not a PyTorch")), text
    assert "cannot read" not in text
    if keep == -10:  # the exact case of the finding
        assert "truncated or corrupt checkpoint file" in text


def test_inception_hint_names_real_settings(tmp_path, monkeypatch):
    monkeypatch.delenv(feature_extractors.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError) as info:
        feature_extractors.resolve_inception_weights(None)
    text = str(info.value)
    assert "pass --weights" not in text and "eval.weights_path" in text and "dtr eval: --weights PATH" in text


def test_out_may_not_replace_an_input(tmp_path, run_cli):
    cfg = write(tmp_path / "c.yaml", GOOD)
    code, _, err = run_cli("masks", str(cfg), "--out", str(cfg))
    assert code == 2 and err.strip() == f"dtr: error: --out {cfg}: is an input of this command ({cfg}); choose " \
                                        f"another file"
    assert cfg.read_text() == GOOD
    samples = write(tmp_path / "s.npz", "not read")
    code, _, err = run_cli("eval", "--samples", str(samples), "--ref", "dataset:digits", "--out", str(samples))
    assert code == 2 and "is an input of this command" in err and samples.read_text() == "not read"
