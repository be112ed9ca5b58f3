"""Config loading, overrides and the one-line errors for bad input (exit status 2, no traceback)."""
import pytest

import dtr_plugins as dp
from dtr_plugins.core.errors import ConfigError

from ..conftest import ROOT, write

GOOD = """\
name: tiny
backbone: {name: dit, input_size: 8, patch_size: 1, hidden_size: 32, depth: 2, num_heads: 2, in_channels: 1,
  num_classes: 10}
routing: {name: dtr, alpha: 4.0, beta: 0.8}
diffusion: {steps: 100, schedule: linear, learn_sigma: true}
data: {name: digits, image_size: 8}
train: {steps: 10, batch_size: 8}
eval: {at_end: false}
"""


def test_load_fills_defaults_and_applies_typed_overrides(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD)
    cfg = dp.load_config(path, overrides=["routing.beta=0.7", "train.lr=1e-3", "train.ema_warmup=true"])
    assert cfg.routing.name == "dtr" and cfg.routing.params == {"alpha": 4.0, "beta": 0.7}
    assert cfg.train.lr == 1e-3 and cfg.train.ema_warmup is True
    assert cfg.loss_weighting.name == "constant"
    assert cfg.backbone.params["learn_sigma"] is True  # filled from diffusion.learn_sigma
    cfg = dp.load_config(path, overrides=["routing={name: random, beta: 0.5}"])
    assert cfg.routing.params == {"beta": 0.5, "seed": 0}


def test_shipped_configs_validate():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        dp.load_config(path)


def test_resolved_config_round_trips(tmp_path):
    cfg = dp.load_config(write(tmp_path / "c.yaml", GOOD))
    again = dp.load_config(write(tmp_path / "resolved.yaml", cfg.to_yaml()))
    assert again == cfg


BAD = [
    ("top-level typo", GOOD + "trian: {steps: 1}\n", [], "trian: unknown key (allowed:"),
    ("beta above 1", GOOD, ["routing.beta=1.5"], "routing.beta: Input should be less than or equal to 1 (got 1.5)"),
    ("negative alpha", GOOD, ["routing.alpha=-1"], "routing.alpha"),
    ("unknown strategy", GOOD, ["routing.name=nope"], "routing.name: unknown strategy 'nope' (known: dtr, random"),
    ("unknown backbone", GOOD, ["backbone.name=resnet"], "backbone.name: unknown backbone 'resnet'"),
    ("param of another strategy", GOOD, ["routing.shared_ratio=0.5"],
     "routing.shared_ratio: unknown key (allowed: alpha, beta)"),
    ("zero steps", GOOD, ["train.steps=0"], "train.steps: Input should be greater than or equal to 1 (got 0)"),
    ("bad precision", GOOD, ["train.precision=fp8"],
     "train.precision: Input should be 'fp32', 'bf16' or 'fp16' (got 'fp8')"),
    ("bad schedule", GOOD, ["diffusion.schedule=quadratic"], "diffusion.schedule"),
    ("bad sampler", GOOD, ["sample.sampler=plms"], "sample.sampler"),
    ("string for int", GOOD, ["data.image_size=big"], "data.image_size"),
    ("missing backbone", GOOD.replace("\n".join(GOOD.splitlines()[1:3]) + "\n", ""), [], "backbone: Field required"),
    ("override without =", GOOD, ["routing.beta"], "override 'routing.beta' is not of the form key.path=value"),
    ("override into a value", GOOD, ["name.x=1"], "--set: name is not a section"),
    ("not a mapping", "- a\n- b\n", [], "expected a mapping of sections, got list"),
    ("malformed yaml", GOOD + "train: {steps: [1, 2\n", [], "c.yaml:10: malformed YAML"),
    ("learn_sigma conflict", GOOD, ["backbone.learn_sigma=false"],
     "backbone.learn_sigma: False disagrees with diffusion.learn_sigma"),
]


@pytest.mark.parametrize("label,text,overrides,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_line_exit_2(tmp_path, run_cli, label, text, overrides, expected):
    path = write(tmp_path / "c.yaml", text)
    args = ["validate", str(path)] + [a for o in overrides for a in ("--set", o)]
    code, out, err = run_cli(*args)
    assert code == 2, out
    lines = [ln for ln in err.splitlines() if not ln.startswith("dtr: warning:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert expected in lines[0]
    if not expected.startswith(("override", "--set")):
        assert str(path) in lines[0]  # the message names the file


def test_missing_file(run_cli, tmp_path):
    code, _, err = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: file not found" in err


def test_debug_shows_traceback(tmp_path):
    from dtr_plugins.cli import main

    path = write(tmp_path / "c.yaml", GOOD)
    with pytest.raises(ConfigError):
        main(["--debug", "validate", str(path), "--set", "routing.beta=2"])
    with pytest.raises(ConfigError):
        main(["validate", str(path), "--set", "routing.beta=2", "--debug"])


def test_bad_cli_usage_is_one_line(run_cli):
    with pytest.raises(SystemExit) as exc:
        run_cli("validate")
    assert exc.value.code == 2


def test_validate_prints_resolved_config(tmp_path, run_cli):
    code, out, _ = run_cli("validate", str(write(tmp_path / "c.yaml", GOOD)), "--set", "routing.beta=0.5")
    assert code == 0 and "beta: 0.5" in out and "loss_weighting:" in out and "ema_decay:" in out


def test_masks_heatmap(tmp_path, run_cli):
    out_png = tmp_path / "m.png"
    code, out, err = run_cli("masks", str(write(tmp_path / "c.yaml", GOOD)), "--out", str(out_png))
    assert code == 0, err
    from PIL import Image

    with Image.open(out_png) as img:
        assert img.size[0] > 200 and img.size[1] > 200
    assert "1 distinct table(s) over 2 routed layers" in out
