"""Config behaviour that mutation testing (``make mutate``) found untested: the resolved YAML's layout, notes
under torchrun, and the exact one-line errors (file, key, what is allowed). See docs/testing.md."""
import pytest

import dtr_plugins as dp
from dtr_plugins.core.config import apply_overrides, set_dotted
from dtr_plugins.core.errors import ConfigError

from ..conftest import write
from .test_config import GOOD


def test_resolved_yaml_keeps_the_section_order(tmp_path):
    cfg = dp.load_config(write(tmp_path / "c.yaml", GOOD))
    text = cfg.to_yaml()
    tops = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert tops == list(type(cfg).model_fields)  # name, seed, output_dir, backbone, routing, ...
    assert tops[:3] == ["name", "seed", "output_dir"]
    assert cfg.to_dict()["routing"] == {"name": "dtr", "site": "input", "alpha": 4.0, "beta": 0.8}


def test_switch_notes_only_on_rank_0(tmp_path, capsys, monkeypatch):
    path = write(tmp_path / "c.yaml", GOOD)
    monkeypatch.setenv("RANK", "1")
    dp.load_config(path, overrides=["routing.name=random"])
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    dp.load_config(path, overrides=["routing.name=random"])
    assert capsys.readouterr().err == ("dtr: note: --set routing.name=random replaces 'dtr': dropped "
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
    assert str(info.value) == "suite.yaml: runs.0.set: override '=1' is not of the form key.path=value"
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["a=[1"])
    assert str(info.value) == "--set: override 'a=[1': value is not valid YAML"


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
        ("wandb", {"project": "dtr-plugins", "entity": None, "mode": "offline"})]
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
