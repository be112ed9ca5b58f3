"""The hub finds backbones only through the state-dict adapter a backbone plugin declares
(:class:`dtr_plugins.core.contracts.StateDictAdapter`): a foreign folder loads through any plugin's adapter."""
import json

import pytest
import torch

from dtr_plugins.core.contracts import StateDictAdapter
from dtr_plugins.core.errors import CheckpointError
from dtr_plugins.sharing import hub

from ..conftest import registry_with

ADM = {"image_size": 8, "in_channels": 1, "model_channels": 32, "num_res_blocks": 1, "attention_resolutions": [],
       "channel_mult": [1], "num_heads": 1, "num_classes": 1}


class ToyAdapter:
    """A foreign layout for ``adm_unet``: every key prefixed with ``toy.``; ``config.json`` holds the params."""

    layout, input_space, weights_file = "toy", "pixels", "toy.safetensors"

    def reads(self, config):
        return config.get("_class_name") == "ToyUNet"

    def params_from_foreign_config(self, config, *, source):
        return dict(config["params"])

    def from_foreign_state_dict(self, state, params, *, source):
        return {k.removeprefix("toy."): v for k, v in state.items()}

    def to_foreign_state_dict(self, model, state, *, num_timesteps):
        return {f"toy.{k}": v for k, v in state.items()}, {"_class_name": "ToyUNet"}, {}


@pytest.fixture
def toy_registry(monkeypatch):
    registry = registry_with("state_dict_adapter", "adm_unet", ToyAdapter, description="adm_unet <-> toy layout")
    for where in ("dtr_plugins.core.plugins", "dtr_plugins.compose.build", "dtr_plugins.compose.validate",
                  "dtr_plugins.core.config"):
        monkeypatch.setattr(f"{where}.default_registry", lambda: registry)
    return registry


def test_a_plugins_adapter_loads_a_foreign_folder(tmp_path, toy_registry):
    from safetensors.torch import save_file

    from dtr_plugins.compose import build_model
    from dtr_plugins.core.config import config_from_dict

    assert isinstance(toy_registry.build("state_dict_adapter", "adm_unet"), StateDictAdapter)
    torch.manual_seed(0)
    source = build_model(config_from_dict({"name": "a", "backbone": {"name": "adm_unet", **ADM},
                                           "data": {"name": "synthetic", "image_size": 8, "channels": 1}}))
    for p in source.parameters():
        torch.nn.init.normal_(p)
    state, config, _ = ToyAdapter().to_foreign_state_dict(source, source.state_dict(), num_timesteps=1000)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "toy.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**config, "params": ADM}))

    model, cfg, _ = hub.from_pretrained(tmp_path)
    assert cfg.backbone.name == "adm_unet" and cfg.backbone.params["model_channels"] == 32
    loaded = model.state_dict()
    assert set(loaded) == set(source.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())


def test_a_folder_no_adapter_reads_is_one_line(tmp_path, toy_registry):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "OtherNet"}))
    with pytest.raises(CheckpointError, match="nor a model that an installed backbone reads"):
        hub.from_pretrained(tmp_path)


def test_hub_imports_no_backbone():
    from .test_architecture import import_graph

    bad = [f"{e.where()} imports {e.target}" for e in import_graph()
           if e.source.startswith("dtr_plugins.sharing") and e.target.startswith("dtr_plugins.backbones")]
    assert not bad, "\n".join(bad)
