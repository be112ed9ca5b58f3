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
