"""Config inputs that must be refused (or accepted) as one line, exit 2, no traceback ("Trustworthy results" #12).

Each case is run through ``dtr validate``, which runs everything ``dtr train`` checks before its first step
(:func:`dtr_plugins.compose.validate_run`).
"""
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.core.config import check_path_component
from dtr_plugins.core.errors import ConfigError

from ..conftest import ROOT, write
from .test_config import GOOD

BAD = [
    # 14: lax bool-to-int and str-to-number
    ("bool for int", GOOD, ["train.steps=true"], "train.steps: expected an integer, got True (bool)"),
    ("bool for float", GOOD, ["routing.beta=true"], "routing.beta: expected a number, got True (bool)"),
    ("string for float", GOOD, ["train.lr='0.1'"], "train.lr: expected a number, got '0.1' (str)"),
    ("int for bool", GOOD, ["train.compile=1"], "train.compile: expected a boolean, got 1 (int)"),
    # 14: duplicate keys at any level
    ("duplicate section", GOOD + "train: {steps: 2}\n", [],
     "c.yaml:9: malformed YAML: duplicate key 'train' (first given on line 7)"),
    ("duplicate nested key", GOOD.replace("beta: 0.8}", "beta: 0.8, beta: 0.5}"), [],
     "c.yaml:4: malformed YAML: duplicate key 'beta' (first given on line 4)"),
    # 14: zero channels per task
    ("beta too small", GOOD, ["routing.beta=0.01"],
     "routing.beta: 0.01 gives 100 of 100 tasks no channels in routed layers of width 32; the smallest allowed "
     "value for that width is 0.0313"),
    # 6: devices
    ("unknown device", GOOD, ["train.device=gpu"],
     "train.device: unknown device 'gpu' (allowed: auto, cpu, cuda, cuda:N, mps)"),
    # 13: path escapes
    ("name escapes", GOOD, ["name=../../escape"], "name: '../../escape' is not a valid name (one path component"),
    ("absolute name", GOOD, ["name=/tmp/x"], "name: '/tmp/x' is not a valid name"),
    ("dot-dot name", GOOD, ["name=.."], "name: '..' is not a valid name"),
    # 14: what train finds before its first step
    ("size vs backbone", GOOD, ["data.image_size=16"],
     "data.image_size: 16 but backbone 'dit' expects 8px images (backbone.input_size)"),
    ("channels vs backbone", GOOD, ["data.channels=3"],
     "data: 'digits' gives 3-channel images but backbone.in_channels is 1; set backbone.in_channels to 3, or give "
     "the data 1-channel images"),
    ("guidance unconditional", GOOD, ["backbone.num_classes=1", "sample.cfg_scale=2"],
     "sample.cfg_scale: 2 asks for classifier-free guidance, but this backbone (num_classes=1) is unconditional"),
    ("guidance without null class", GOOD, ["backbone.class_dropout_prob=0", "sample.cfg_scale=1.5"],
     "sample.cfg_scale: 1.5 asks for classifier-free guidance, but this backbone (num_classes=10) has no null class"),
    ("unknown feature extractor", GOOD, ["eval.feature_extractor=nope"],
     "eval.feature_extractor: unknown feature extractor 'nope' (known: digits-classifier, dinov2, fashion-classifier, "
     "inception-v3-compat"),
    ("respacing beyond T", GOOD, ["sample.respacing=250"], "sample.respacing: respacing '250': cannot take 250 steps"),
    ("training config without data", GOOD.replace("data: {name: digits, image_size: 8}\n", ""), [],
     "data: missing section; training and evaluation need the training data"),
    ("too few eval samples", GOOD, ["eval={metrics: [kid], num_samples: 1, feature_extractor: digits-classifier}"],
     "eval.num_samples:"),
]


@pytest.mark.parametrize("label,text,overrides,expected", BAD, ids=[b[0] for b in BAD])
def test_refused_as_one_line(tmp_path, run_cli, label, text, overrides, expected):
    path = write(tmp_path / "c.yaml", text)
    code, out, err = run_cli("validate", str(path), *[a for o in overrides for a in ("--set", o)])
    lines = [ln for ln in err.splitlines() if not ln.startswith("dtr: warning:")]
    assert code == 2 and out == ""
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"dtr: error: {path}") and expected in lines[0], lines[0]


def test_debug_shows_the_traceback(tmp_path, capsys):
    from dtr_plugins.cli import main

    assert main(["validate", str(write(tmp_path / "c.yaml", GOOD)), "--set", "train.steps=true", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err and "train.steps" in err.strip().splitlines()[-1]


def test_non_utf8_config_is_one_line(tmp_path, run_cli):
    path = tmp_path / "c.yaml"
    path.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    code, _, err = run_cli("validate", str(path))
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"dtr: error: {path}:9: not UTF-8 text (byte 0xe9 at offset {len(GOOD) + 5}); "
                           f"save the file as UTF-8")


def test_cuda_device_without_cuda(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli("validate", str(write(tmp_path / "c.yaml", GOOD)), "--set", "train.device=cuda")
    assert code == 2 and "Traceback" not in err
    assert err.strip().endswith("train.device: 'cuda' but this machine has no CUDA device; use auto or cpu "
                                "(allowed: auto, cpu, cuda, cuda:N, mps)")


def test_inception_weights_absent_refused_before_training(tmp_path, run_cli, monkeypatch):
    monkeypatch.delenv("DTR_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code, _, err = run_cli("validate", str(write(tmp_path / "c.yaml", GOOD)), "--set", "eval.at_end=true")
    assert code == 2 and "Traceback" not in err
    assert "eval.weights_path: inception-v3-compat needs its weights file" in err
    config = write(tmp_path / "c.yaml", GOOD.replace("name: tiny", f"name: tiny\noutput_dir: {tmp_path / 'runs'}"))
    code, _, err = run_cli("train", str(config), "--set", "eval.at_end=true")
    assert code == 2 and "inception-v3-compat needs its weights file" in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_adm_without_null_class_refuses_guidance(run_cli):
    code, _, err = run_cli("validate", str(ROOT / "configs" / "adm_digits.yaml"), "--set", "sample.cfg_scale=2")
    assert code == 2 and "sample.cfg_scale: 2 asks for classifier-free guidance" in err and "Traceback" not in err


def test_output_dir_that_is_a_file(tmp_path, run_cli):
    out = write(tmp_path / "runs", "not a folder")
    code, _, err = run_cli("validate", str(write(tmp_path / "c.yaml", GOOD)), "--set", f"output_dir={out}")
    assert code == 2 and f"output_dir: '{out}' is a file, not a folder" in err


def test_batch_not_divisible_by_world_size(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    code, _, err = run_cli("validate", str(write(tmp_path / "c.yaml", GOOD)))
    assert code == 2 and "train.batch_size: 8 is not divisible by the world size 3" in err


def test_accepted_inputs(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD)
    cfg = dp.load_config(path, overrides=["sample.respacing=50", "train.lr=1e-4", "train.grad_clip=1",
                                          "name=run_1.a-b"])
    assert cfg.sample.respacing == "50"  # a YAML integer is the string "50"
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.grad_clip, float)  # ints are floats, 1e-4 a float
    assert cfg.name == "run_1.a-b"
    text = GOOD.replace("train: {steps: 10, batch_size: 8}", "train: {steps: 10, batch_size: 8, lr: 3e-4}")
    assert dp.load_config(write(tmp_path / "d.yaml", text)).train.lr == 3e-4


def test_check_path_component():
    assert check_path_component("a.b_c-1", "suite.id") == "a.b_c-1"
    for bad in ("", ".", "..", "a/b", "/abs", "a b", "a\\b", 3):
        with pytest.raises(ConfigError, match=r"^suite\.id: .* is not a valid name"):
            check_path_component(bad, "suite.id")


def test_changing_a_plugin_by_set_starts_from_its_defaults(tmp_path, run_cli):
    path = write(tmp_path / "c.yaml", GOOD)
    code, out, err = run_cli("validate", str(path), "--set", "routing.name=random", "--set", "routing.seed=3")
    assert code == 0, err
    assert err.strip() == ("dtr: note: --set routing.name=random replaces 'dtr': dropped routing.alpha=4.0, "
                           "routing.beta=0.8; 'random' starts from its defaults")
    cfg = dp.load_config(path, overrides=["routing.name=random", "routing.beta=0.5"])
    assert cfg.routing.params == {"beta": 0.5, "seed": 0}
    cfg = dp.load_config(path, overrides=["routing.name=dtr", "routing.beta=0.5"])  # same name: a plain override
    assert cfg.routing.params == {"alpha": 4.0, "beta": 0.5}


def test_config_only_skips_the_machine_checks(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write(tmp_path / "c.yaml", GOOD)
    code, _, err = run_cli("validate", str(path), "--set", "train.device=cuda", "--config-only")
    assert code == 0, err
    code, _, err = run_cli("validate", str(path), "--set", "train.device=cuda", "--set", "routing.beta=0.01",
                           "--config-only")
    assert code == 2 and "routing.beta: 0.01" in err  # the config itself is still checked in full


def _image_folder(root, classes):
    from PIL import Image

    for name in classes:
        (root / name).mkdir(parents=True)
        Image.new("L", (8, 8), 128).save(root / name / "a.png")
    return root


@pytest.mark.parametrize("folders", [5, 4])
def test_validate_checks_the_dataset_label_space(tmp_path, run_cli, folders):
    """#12 item 4 found by `dtr validate`, not only by `dtr train`: 5 or 4 class folders for num_classes 3."""
    data = _image_folder(tmp_path / "imgs", [f"class{i}" for i in range(folders)])
    over = ["backbone.num_classes=3", "backbone.in_channels=3",
            f"data={{name: image_folder, path: {data}, image_size: 8}}"]
    code, _, err = run_cli("validate", str(write(tmp_path / "c.yaml", GOOD)), *[a for o in over for a in ("--set", o)])
    assert code == 2 and "Traceback" not in err
    assert f"backbone.num_classes is 3 but data 'image_folder' has {folders} classes" in err


def test_channel_mismatch_names_only_keys_the_dataset_takes(tmp_path, run_cli):
    """image_folder's channels are not a setting: the line must not send the user to data.channels (a fresh user
    followed that advice and got "data.channels: unknown key")."""
    data = _image_folder(tmp_path / "imgs", ["a", "b"])
    over = ["backbone.num_classes=2", f"data={{name: image_folder, path: {data}, image_size: 8}}"]
    code, _, err = run_cli("validate", str(write(tmp_path / "c.yaml", GOOD)), *[a for o in over for a in ("--set", o)])
    assert code == 2 and "Traceback" not in err
    assert "data: 'image_folder' gives 3-channel images but backbone.in_channels is 1; set backbone.in_channels " \
           "to 3, or give the data 1-channel images" in err and "data.channels" not in err, err


def test_validate_finds_a_missing_data_folder(tmp_path, run_cli):
    over = ["backbone.in_channels=3", f"data={{name: image_folder, path: {tmp_path / 'nope'}, image_size: 8}}"]
    code, _, err = run_cli("validate", str(write(tmp_path / "c.yaml", GOOD)), *[a for o in over for a in ("--set", o)])
    lines = [ln for ln in err.splitlines() if not ln.startswith("dtr: warning:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert str(tmp_path / "nope") in lines[0]
