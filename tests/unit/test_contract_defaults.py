"""Defaults and capabilities that depend on a plugin come from that plugin (core/contracts.py)."""
import ast
import types

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import dtr_plugins as dp
from dtr_plugins.compose import validate_run
from dtr_plugins.core.config import config_from_dict
from dtr_plugins.core.contracts import DiffusionProcess, SupportsHeldoutLoss
from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.core.process import GaussianProcess
from dtr_plugins.core.timesteps import UniformTimesteps

from ..conftest import ROOT

BASE = {"name": "c", "backbone": {"name": "dit", "input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 2,
                                  "num_heads": 2, "in_channels": 1, "num_classes": 10},
        "data": {"name": "digits"}, "train": {"steps": 1, "batch_size": 4}, "eval": {"at_end": False}}


def test_flow_matching_without_a_sampler_takes_its_own_default(tmp_path):
    cfg = config_from_dict({**BASE, "diffusion": {"name": "flow_matching", "steps": 50}})
    assert (cfg.sample.sampler, cfg.sample.respacing) == ("euler", "50")
    assert cfg.backbone.params["learn_sigma"] is False  # the process says the backbone predicts no variance
    validate_run(cfg, run_dir=tmp_path / "run")
    gaussian = config_from_dict(BASE)
    assert (gaussian.sample.sampler, gaussian.sample.respacing) == ("ddim", "ddim50")  # unchanged for gaussian
    given = config_from_dict({**BASE, "diffusion": {"name": "flow_matching"}, "sample": {"sampler": "heun"}})
    assert (given.sample.sampler, given.sample.respacing) == ("heun", "50")


@pytest.mark.parametrize("name", ["gaussian", "flow_matching"])
def test_a_process_samples_with_the_defaults_a_config_gets(name):
    """One default per process: what ``process.sample`` applies without settings is what a config without
    ``sample.sampler`` / ``sample.respacing`` gets (flow matching once said heun in one and euler in the other)."""
    cfg = config_from_dict({**BASE, "diffusion": {"name": name, "steps": 50}})
    process = build_registry().build("process", name, **cfg.diffusion.params)
    assert (process.default_solver.sampler, str(process.default_solver.respacing)) == \
        (cfg.sample.sampler, str(cfg.sample.respacing)) == (process.default_sampler, process.default_respacing)


class ToyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = 10


class ToyProcess:
    """A process written from the DiffusionProcess Protocol alone (no built-in base class)."""

    learn_sigma = False
    samplers = ("walk",)
    default_sampler = "walk"
    default_respacing = "3"
    loss_weightings = ("constant",)

    def __init__(self, steps):
        self.num_timesteps = steps

    def check_sample_settings(self, sampler, respacing):
        if sampler not in self.samplers:
            raise ConfigError(f"sample.sampler: {sampler!r} is not a toy sampler (allowed: walk)")

    def timestep_sampler(self):
        return UniformTimesteps(self.num_timesteps)

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        mse = ((model(x_start, t) - x_start) ** 2).flatten(1).mean(1)
        return {"loss": mse, "mse": mse}

    def sample(self, model, shape, **kwargs):
        return torch.zeros(shape)

    def loss_bucket(self, t, buckets):
        return t * buckets // self.num_timesteps

    def continuous_tasks(self, strategy):
        return None


def _registry_with(**hooks):
    module = types.ModuleType("toy_plugins")
    for name, hook in hooks.items():
        setattr(module, name, dp.hookimpl(hook))
    return build_registry([module])


def test_a_process_satisfying_the_protocol_loads_through_config(tmp_path):
    assert isinstance(ToyProcess(10), DiffusionProcess) and not isinstance(ToyProcess(10), SupportsHeldoutLoss)
    registry = _registry_with(dtr_register_processes=lambda register: register("toy", ToyProcess, params=ToyParams))
    cfg = config_from_dict({**BASE, "diffusion": {"name": "toy"}}, registry=registry)
    assert (cfg.sample.sampler, cfg.sample.respacing) == ("walk", "3")
    assert cfg.backbone.params["learn_sigma"] is False
    validate_run(cfg, registry, run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"loss_weighting.name: 'min_snr' does not apply to diffusion 'toy'"):
        config_from_dict({**BASE, "diffusion": {"name": "toy"}, "loss_weighting": {"name": "min_snr"}},
                         registry=registry)
    with pytest.raises(ConfigError, match=r"sample.sampler: 'ddim' is not a toy sampler"):
        config_from_dict({**BASE, "diffusion": {"name": "toy"}, "sample": {"sampler": "ddim"}}, registry=registry)


def test_a_process_missing_a_contract_member_is_one_plugin_error():
    class Bare:
        def __init__(self, steps):
            self.num_timesteps = steps

    registry = _registry_with(dtr_register_processes=lambda register: register("bare", Bare, params=ToyParams))
    with pytest.raises(PluginError, match=r"process 'bare' .* missing .*check_sample_settings.*default_sampler"):
        config_from_dict({**BASE, "diffusion": {"name": "bare"}}, registry=registry)


def test_gaussian_process_owns_its_respacing_check():
    process = GaussianProcess(steps=100)
    process.check_sample_settings("ddpm", "25")
    with pytest.raises(ConfigError, match=r"sample.respacing: .* \(diffusion.steps is 100\)"):
        process.check_sample_settings("ddim", "ddim33")


def test_a_backbone_without_a_variance_param_refuses_a_process_that_learns_sigma():
    class Params(BaseModel):
        in_channels: int = 1

    registry = _registry_with(dtr_register_backbones=lambda register: register("novar", lambda **p: None,
                                                                              params=Params))
    with pytest.raises(ConfigError, match=r"'novar' cannot predict a variance .* set diffusion.learn_sigma: false"):
        config_from_dict({**BASE, "backbone": {"name": "novar"}}, registry=registry)
    cfg = config_from_dict({**BASE, "backbone": {"name": "novar"}, "diffusion": {"learn_sigma": False}},
                           registry=registry)
    assert cfg.backbone.params == {"in_channels": 1}


BUILTIN_CLASSES = {"GaussianDiffusion", "GaussianProcess", "FlowMatching", "DiT", "LatentDiT", "ADMUNet", "UNetModel",
                   "Digits", "Synthetic", "ImageFolder", "IdentityCodec", "AutoencoderKLCodec", "DTR", "Vanilla"}


def test_no_isinstance_against_a_builtin_plugin_class_in_the_engine():
    """The engine (everything but the plugin packages) switches on no built-in plugin class."""
    plugin_dirs = {"backbones", "strategies", "codecs", "processes", "weighting", "data", "trackers", "launchers",
                   "extractors"}
    offenders = []
    for path in sorted((ROOT / "dtr_plugins").rglob("*.py")):
        parts = path.relative_to(ROOT / "dtr_plugins").parts
        if parts[0] in plugin_dirs or path.name in ("diffusion.py", "flow.py", "process.py"):
            continue  # a plugin (or the module defining a built-in process) may check its own classes
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if names & BUILTIN_CLASSES:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
