"""Config loading, overrides and the one-line errors for bad input (exit status 2, no traceback)."""
import pytest

import dtr_plugins as dp
from dtr_plugins.core.config import apply_overrides, set_dotted
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
    ("unknown strategy", GOOD, ["routing.name=nope"],
     "routing.name: unknown strategy 'nope' (known: dtr, dydit_width, random"),
    ("unknown backbone", GOOD, ["backbone.name=resnet"], "backbone.name: unknown backbone 'resnet'"),
    ("param of another strategy", GOOD, ["routing.shared_ratio=0.5"],
     "routing.shared_ratio: unknown key (allowed: alpha, beta, site)"),
    ("zero steps", GOOD, ["train.steps=0"], "train.steps: Input should be greater than or equal to 1 (got 0)"),
    ("bad precision", GOOD, ["train.precision=fp8"],
     "train.precision: Input should be 'fp32', 'bf16' or 'fp16' (got 'fp8')"),
    ("bad schedule", GOOD, ["diffusion.schedule=quadratic"], "diffusion.schedule"),
    ("bad sampler", GOOD, ["sample.sampler=plms"], "sample.sampler"),
    ("string for int", GOOD, ["data.image_size=big"], "data.image_size"),
    ("missing backbone", GOOD.replace("\n".join(GOOD.splitlines()[1:3]) + "\n", ""), [], "backbone: Field required"),
    ("override without =", GOOD, ["routing.beta"], "--set: 'routing.beta' is not of the form key.path=value"),
    ("override with a newline", GOOD, ["name=a\nb"], "--set: 'name=a\\nb' holds a control character ('\\n')"),
    ("override into a value", GOOD, ["name.x=1"], "--set: name is not a section"),
    ("not a mapping", "- a\n- b\n", [], "expected a mapping of sections, got list"),
    ("malformed yaml", GOOD + "train: {steps: [1, 2\n", [], "c.yaml:10: malformed YAML"),
    ("learn_sigma conflict", GOOD, ["backbone.learn_sigma=false"],
     "backbone.learn_sigma: False disagrees with diffusion.learn_sigma"),
    ("evaluation without metrics", GOOD, ["eval.metrics=[]", "eval.at_end=true"],
     "eval: no metrics, but an evaluation is asked for (eval.at_end or eval.every)"),
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


def test_debug_shows_traceback(tmp_path, capsys):
    from dtr_plugins.cli import main

    path = write(tmp_path / "c.yaml", GOOD)
    for argv in (["--debug", "validate", str(path), "--set", "routing.beta=2"],
                 ["validate", str(path), "--set", "routing.beta=2", "--debug"]):
        assert main(argv) == 2  # the same exit status as without --debug (a fresh user found 1)
        err = capsys.readouterr().err
        assert "Traceback" in err and "ConfigError" in err
        assert err.strip().splitlines()[-1].startswith("dtr: error: ") and "routing.beta" in err


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


# --- pinned by mutation testing (survivors of `make mutate`; see docs/testing.md) ---
# Config behaviour that mutation testing (``make mutate``) found untested: the resolved YAML's layout, notes
# under torchrun, and the exact one-line errors (file, key, what is allowed). See docs/testing.md.

def test_resolved_yaml_keeps_the_section_order(tmp_path):
    cfg = dp.load_config(write(tmp_path / "c.yaml", GOOD))
    text = cfg.to_yaml()
    tops = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    # optional sections left out when unset (the fingerprint of older runs holds)
    unset = {"ema", "timesteps", "text", "token_routing", "regularizer"}
    assert tops == [f for f in type(cfg).model_fields if f not in unset]  # name, seed, output_dir, backbone, ...
    assert tops[:3] == ["name", "seed", "output_dir"]
    assert cfg.to_dict()["routing"] == {"name": "dtr", "site": "input", "alpha": 4.0, "beta": 0.8}


def test_switch_notes_only_on_rank_0(tmp_path, log_text, monkeypatch):
    path = write(tmp_path / "c.yaml", GOOD)
    monkeypatch.setenv("RANK", "1")
    dp.load_config(path, overrides=["routing.name=random"])
    assert log_text() == ""
    monkeypatch.setenv("RANK", "0")
    dp.load_config(path, overrides=["routing.name=random"])
    assert log_text() == ("dtr: note: --set routing.name=random replaces 'dtr': dropped "
                                       "routing.alpha=4.0, routing.beta=0.8; 'random' starts from its defaults\n")


def test_set_dotted_error_names_the_scalar_on_the_path():
    data = {"a": {"b": 1}}
    with pytest.raises(ConfigError) as info:
        set_dotted(data, "a.b.c.d", 2)
    assert str(info.value) == "--set: a.b is not a section, cannot set a.b.c.d"
    set_dotted(data, "x.y", 3)
    assert data == {"a": {"b": 1}, "x": {"y": 3}}


def test_override_errors_name_the_source():
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["=1"], source="suite.yaml: runs.0.set")
    assert str(info.value) == "suite.yaml: runs.0.set: '=1' is not of the form key.path=value"
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["a=[1"])
    assert str(info.value) == "--set: 'a=[1': the value is not valid YAML"


def test_launcher_set_reads_values_as_set_does():
    """One reader for the command line's YAML-valued KEY=VALUE items: same values, same one-line error."""
    from dtr_plugins.launchers import parse_launcher_settings

    assert parse_launcher_settings(["gpus_per_run=8", "qos=", "extra={a: 1}"]) == {
        "gpus_per_run": 8, "qos": None, "extra": {"a": 1}}
    assert apply_overrides({}, ["a.b=8", "c="]) == {"a": {"b": 8}, "c": None}
    with pytest.raises(ConfigError) as info:
        parse_launcher_settings(["qos=[1"])
    assert str(info.value) == "--launcher-set: 'qos=[1': the value is not valid YAML"


def test_override_value_may_hold_an_equals_sign():
    assert apply_overrides({}, ["a.b=x=y"]) == {"a": {"b": "x=y"}}


def test_override_into_a_scalar_names_the_source():
    with pytest.raises(ConfigError) as info:
        apply_overrides({"name": "tiny"}, ["name.x=1"], source="suite.yaml: runs.0.set")
    assert str(info.value) == "suite.yaml: runs.0.set: name is not a section, cannot set name.x"


def switched(before, overrides):
    notes = []
    return apply_overrides(before, overrides, notes=notes), notes


def test_switch_note_lists_only_the_dropped_params():
    data, notes = switched({"routing": {"name": "dtr", "alpha": 4.0, "beta": 0.8}},
                           ["routing.name=random", "routing.beta=0.5"])
    assert data == {"routing": {"name": "random", "beta": 0.5}}
    assert notes == ["--set routing.name=random replaces 'dtr': dropped routing.alpha=4.0; 'random' starts from its "
                     "defaults"]


def test_same_name_or_a_first_name_keeps_the_params():
    before = {"routing": {"name": "dtr", "alpha": 2.0}}
    assert switched(before, ["routing.name=dtr"]) == ({"routing": {"name": "dtr", "alpha": 2.0}}, [])
    nameless = {"routing": {"alpha": 2.0}}
    assert switched(nameless, ["routing.name=dtr"]) == ({"routing": {"name": "dtr", "alpha": 2.0}}, [])


def test_switch_keeps_only_its_own_sections_explicit_keys():
    """diffusion.learn_sigma is not backbone.learn_sigma: switching the backbone drops the old one's."""
    before = {"backbone": {"name": "dit", "learn_sigma": True, "depth": 2}, "diffusion": {"learn_sigma": True}}
    data, notes = switched(before, ["backbone.name=adm", "diffusion.learn_sigma=false"])
    assert data["backbone"] == {"name": "adm"} and data["diffusion"] == {"learn_sigma": False}
    assert notes == ["--set backbone.name=adm replaces 'dit': dropped backbone.learn_sigma=True, backbone.depth=2; "
                     "'adm' starts from its defaults"]


def test_switch_keeps_a_nested_param_set_explicitly():
    before = {"data": {"name": "folder", "extra": {"b": {"c": 1}}, "size": 8}}
    data, _ = switched(before, ["data.name=other", "data.extra.b.c=2"])
    assert data == {"data": {"name": "other", "extra": {"b": {"c": 2}}}}


# ------------------------------------------------------------------------------------------------
# reading YAML: every failure is one line naming the file (and the line when YAML knows it)
# ------------------------------------------------------------------------------------------------

def test_unreadable_and_unparsable_files(tmp_path):
    from dtr_plugins.core.config import read_yaml

    with pytest.raises(ConfigError) as info:
        read_yaml(tmp_path)  # a folder
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"
    bell = write(tmp_path / "bell.yaml", "name: a\x07b\n")  # a reader error: no line mark, no 'problem'
    with pytest.raises(ConfigError) as info:
        read_yaml(bell)
    assert str(info.value) == (f"{bell}: malformed YAML: unacceptable character #x0007: special characters are "
                               "not allowed")
    unhashable = write(tmp_path / "key.yaml", "? [a, b]\n: 1\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(unhashable)
    assert str(info.value) == f"{unhashable}:1: malformed YAML: found unhashable key"
    twice = write(tmp_path / "twice.yaml", "a: 1\nb: 2\na: 3\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(twice)
    assert str(info.value) == f"{twice}:3: malformed YAML: duplicate key 'a' (first given on line 1)"


# ------------------------------------------------------------------------------------------------
# resolving plugins: learn_sigma follows the process, trackers get their defaults
# ------------------------------------------------------------------------------------------------

def test_backbone_learn_sigma_follows_the_diffusion(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD)
    cfg = dp.load_config(path, overrides=["diffusion.learn_sigma=false"])
    assert cfg.backbone.params["learn_sigma"] is False
    with pytest.raises(ConfigError) as info:
        dp.load_config(path, overrides=["diffusion.learn_sigma=false", "backbone.learn_sigma=true"])
    assert str(info.value) == (f"{path}: backbone.learn_sigma: True disagrees with diffusion.learn_sigma False; "
                               "set only diffusion.learn_sigma")
    flow = write(tmp_path / "f.yaml", GOOD.replace("diffusion: {steps: 100, schedule: linear, learn_sigma: true}",
                                                   "diffusion: {name: flow_matching}"))
    with pytest.raises(ConfigError) as info:
        dp.load_config(flow, overrides=["backbone.learn_sigma=true"])
    assert str(info.value) == (f"{flow}: backbone.learn_sigma: True disagrees with diffusion.learn_sigma False; "
                               "diffusion 'flow_matching' fixes it; remove backbone.learn_sigma")


def test_no_plugins_installed_says_so():
    from dtr_plugins.core.config import config_from_dict, parse_yaml
    from dtr_plugins.core.plugins import PluginRegistry

    data = parse_yaml(GOOD)
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="c.yaml", registry=PluginRegistry())
    assert str(info.value) == "c.yaml: diffusion.name: unknown process 'gaussian' (known: none installed)"


def test_trackers_resolved_with_their_defaults(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD + "log: {trackers: [tensorboard, {name: wandb, mode: offline}]}\n")
    trackers = dp.load_config(path).log.trackers
    assert [(t.name, t.params) for t in trackers] == [
        ("tensorboard", {"subdir": "tensorboard"}),
        ("wandb", {"project": None, "entity": None, "run_name": None, "group": None, "tags": [], "mode": "offline"})]
    with pytest.raises(ConfigError) as info:
        dp.load_config(path, overrides=["log.trackers=[{name: tensorboard, dir: x}]"])
    assert str(info.value) == f"{path}: log.trackers.0.dir: unknown key (allowed: subdir)"


def test_declared_backbone_class():
    import torch

    from dtr_plugins.backbones.dit import DiT
    from dtr_plugins.core.routing import declared_backbone_class

    def annotated() -> DiT: ...
    def plain_module() -> torch.nn.Module: ...
    def unannotated(): ...

    assert declared_backbone_class(DiT) is DiT and declared_backbone_class(annotated) is DiT
    assert declared_backbone_class(plain_module) is None and declared_backbone_class(unannotated) is None
    assert declared_backbone_class(torch.nn.Linear) is None


def test_config_from_dict_names_its_source():
    from dtr_plugins.core.config import config_from_dict

    with pytest.raises(ConfigError) as info:
        config_from_dict({"name": "x"})
    assert str(info.value).startswith("<config>: backbone: Field required")


# ------------------------------------------------------------------------------------------------
# codec section and plugin params as plain YAML values
# ------------------------------------------------------------------------------------------------

def test_codec_section_resolution(tmp_path):
    path = write(tmp_path / "c.yaml", GOOD)
    cfg = dp.load_config(path, overrides=["codec={name: identity}"])
    assert cfg.codec is not None and cfg.codec.name == "identity" and cfg.codec.shard_size == 4096
    cfg = dp.load_config(path, overrides=["codec={name: identity, shard_size: 7, cache_dtype: float16}"])
    assert cfg.codec is not None and (cfg.codec.shard_size, cfg.codec.cache_dtype) == (7, "float16")
    with pytest.raises(ConfigError) as info:
        dp.load_config(path, overrides=["codec={name: identity, bogus: 1}"])
    assert str(info.value) == f"{path}: codec.bogus: unknown key"  # identity has no params
    with pytest.raises(ConfigError) as info:
        dp.load_config(path, overrides=["codec={name: nope}"])
    assert str(info.value) == f"{path}: codec.name: unknown codec 'nope' (known: autoencoder_kl, identity)"
    with pytest.raises(ConfigError) as info:
        dp.load_config(path, overrides=["codec={name: identity}", "vae={path: some/vae}"])
    assert str(info.value) == (f"{path}: codec: give either a vae section (the autoencoder_kl shorthand) or a codec "
                               "section, not both")


def test_resolved_plugin_params_are_plain_yaml_values(tmp_path):
    """ADM's channel_mult is a tuple in its params model: the resolved config holds a list, and round-trips."""
    from ..conftest import ROOT

    cfg = dp.load_config(ROOT / "configs" / "adm_digits.yaml")
    assert isinstance(cfg.backbone.params["channel_mult"], list)
    assert dp.load_config(write(tmp_path / "resolved.yaml", cfg.to_yaml())) == cfg


def test_codec_params_are_validated_and_filled(tmp_path):
    from dtr_plugins.core.config import config_from_dict, parse_yaml
    from dtr_plugins.core.plugins import PluginRegistry, default_registry

    path = write(tmp_path / "c.yaml", GOOD)
    cfg = dp.load_config(path, overrides=["codec={name: autoencoder_kl, path: some/vae}"])
    assert cfg.codec is not None and cfg.codec.params["path"] == "some/vae"
    assert set(cfg.codec.params) > {"path"}  # the codec's defaults are filled in
    data = parse_yaml(GOOD + "codec: {name: identity}\n")
    full = default_registry()
    no_codecs = PluginRegistry(plugins={k: v for k, v in full.plugins.items() if k[0] != "codec"})
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="c.yaml", registry=no_codecs)
    assert str(info.value) == "c.yaml: codec.name: unknown codec 'identity' (known: none installed)"
