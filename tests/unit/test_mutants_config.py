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
