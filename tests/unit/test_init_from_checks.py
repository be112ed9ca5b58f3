"""``train.init_from`` is read by ``dtr validate`` as ``dtr train`` will load it: a text file, a cut file, an
unsafe pickle or another model's checkpoint is one line naming the key and the file, before any training."""
import torch

from ..conftest import write

CONFIG = """\
name: ft
output_dir: {out}
backbone: {{name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: {depth}, num_heads: 2, in_channels: 1,
  num_classes: 10}}
routing: {{name: dtr, beta: 0.8}}
diffusion: {{steps: 100}}
data: {{name: digits, image_size: 8}}
train: {{steps: 1, batch_size: 4, threads: 1}}
eval: {{at_end: false, heldout_every: 0}}
"""


class Unsafe:  # a pickled object weights-only loading refuses
    pass


def _weights(tmp_path, depth):
    from dtr_plugins.compose import compose
    from dtr_plugins.core.config import load_config

    cfg = load_config(write(tmp_path / f"d{depth}.yaml", CONFIG.format(out=tmp_path / "runs", depth=depth)))
    path = tmp_path / f"depth{depth}.pt"
    torch.save({"model": compose(cfg, data=False).model.state_dict()}, path)
    return path


def test_validate_reads_init_from_like_train(tmp_path, run_cli):
    config = write(tmp_path / "c.yaml", CONFIG.format(out=tmp_path / "runs", depth=2))
    good, other = _weights(tmp_path, 2), _weights(tmp_path, 3)
    text = write(tmp_path / "notes.pt", "not a checkpoint\n")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": Unsafe()}, unsafe)

    code, _, err = run_cli("validate", str(config), "--set", f"train.init_from={good}")
    assert code == 0, err
    for path, why in ((text, "corrupt or not a PyTorch checkpoint"), (cut, "corrupt or not a PyTorch checkpoint"),
                      (unsafe, "refusing to load, the file needs arbitrary unpickling"),
                      (other, "checkpoint does not match the model (10 unexpected keys")):
        code, _, err = run_cli("validate", str(config), "--set", f"train.init_from={path}")
        lines = [ln for ln in err.splitlines() if not ln.startswith("dtr: warning")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith(f"dtr: error: {config}: train.init_from: {path}: {why}"), lines[0]
    code, out, err = run_cli("train", str(config), "--set", f"train.init_from={other}")
    assert code == 2 and f"train.init_from: {other}: checkpoint does not match the model" in err, err
    assert "run directory" not in out + err and not (tmp_path / "runs").exists()  # refused before it opened
