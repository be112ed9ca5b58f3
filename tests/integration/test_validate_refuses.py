"""`dtr validate` refuses what `dtr train` refuses: the label space against the data, empty class folders;
`num_classes` 0 as docs/data.md says per backbone."""
import numpy as np

from ..conftest import ROOT, write

TINY = """\
name: v
output_dir: {out}
backbone: {{name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, in_channels: {ch},
  num_classes: {nc}}}
diffusion: {{steps: 100}}
data: {data}
train: {{steps: 2, batch_size: 4}}
sample: {{respacing: ddim4, num_samples: 4, batch_size: 4, cfg_scale: 1.0}}
eval: {{at_end: false}}
"""


def _config(tmp_path, nc, data="{name: digits, image_size: 8}", ch=1):
    return write(tmp_path / "c.yaml", TINY.format(out=tmp_path / "runs", nc=nc, data=data, ch=ch))


def _one_error_line(code, err):
    lines = [ln for ln in err.splitlines() if not ln.startswith("dtr: warning")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_validate_refuses_more_classes_than_the_data_has(tmp_path, run_cli):
    path = _config(tmp_path, 11)
    line = _one_error_line(*run_cli("validate", str(path))[::2])
    assert line.startswith(f"dtr: error: {path}: backbone.num_classes is 11 but data 'digits' has 10 classes")
    assert run_cli("validate", str(_config(tmp_path, 10)))[0] == 0
    assert not (tmp_path / "runs").exists()


def test_validate_refuses_an_empty_class_folder(tmp_path, run_cli):
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "b").mkdir(parents=True)
    (root / "a").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "a" / "x.png")
    path = _config(tmp_path, 2, data=f"{{name: image_folder, path: {root}, image_size: 8}}", ch=3)
    line = _one_error_line(*run_cli("validate", str(path))[::2])
    assert f"{root / 'b'}: class folder has no images" in line and str(path) in line


def test_num_classes_zero_as_documented(tmp_path, run_cli):
    doc = (ROOT / "docs" / "data.md").read_text()
    assert "`adm_unet`: unset, 0 or 1" in doc and "`dit` refuses 0" in doc
    line = _one_error_line(*run_cli("validate", str(_config(tmp_path, 0)), "--config-only")[::2])
    assert "backbone.num_classes: Input should be greater than or equal to 1 (got 0)" in line
    code, _, err = run_cli("validate", str(ROOT / "configs" / "adm_digits.yaml"), "--config-only",
                           "--set", "backbone.num_classes=0")
    assert code == 0, err
