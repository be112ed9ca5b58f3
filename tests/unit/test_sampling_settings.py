"""The sampling settings: built once from the config and the caller's options, frozen, recorded as applied."""
import dataclasses

import numpy as np
import pytest
import torch

from dtr_plugins.core.config import config_from_dict
from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.sampling_settings import SamplingOverrides, SamplingSettings
from dtr_plugins.sampling.sample import generate

SAMPLE = {"sampler": "ddim", "respacing": "ddim4", "eta": 0.5, "cfg_scale": 1.0, "cfg_channels": "first3",
          "clip_denoised": True, "batch_size": 4}


def _cfg(**sample):
    return config_from_dict({"name": "t", "backbone": {"name": "dit", "size": "S/2"}, "data": {"name": "synthetic"},
                             "sample": {**SAMPLE, **sample}})


def test_options_go_over_the_config_and_show_in_the_record():
    plain = SamplingSettings.from_config(_cfg())
    assert plain.applied() == {"sampler": "ddim", "respacing": "ddim4", "cfg_scale": 1.0, "guidance": False,
                               "cfg_channels": None, "guidance_interval": None, "time_shift": 1.0, "atol": None,
                               "rtol": None, "eta": 0.5, "clip_denoised": True, "num_samples": 64,
                               "seed": 0, "batch_size": 4}
    asked = SamplingOverrides(num=3, sampler="ddpm", respacing="7", cfg_scale=2.5, batch_size=8, seed=9)
    s = SamplingSettings.from_config(_cfg(), asked, bounded=False)
    assert s.applied() == {"sampler": "ddpm", "respacing": "7", "cfg_scale": 2.5, "guidance": True,
                           "cfg_channels": "first3", "guidance_interval": None, "time_shift": 1.0, "atol": None,
                           "rtol": None, "eta": 0.5, "clip_denoised": False, "num_samples": 3,
                           "seed": 9, "batch_size": 3}  # a batch never larger than the images made
    assert s.key("cfg_scale") == "--cfg-scale" and plain.key("cfg_scale") == "sample.cfg_scale"
    assert s.key("sampler") == "--sampler" and plain.key("respacing") == "sample.respacing"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1  # type: ignore[misc]
    # without --num-samples the config's sample.num_samples is the count (64 when the config does not set it)
    assert SamplingSettings.from_config(_cfg(num_samples=7)).num_samples == 7
    assert SamplingSettings.from_config(_cfg(num_samples=7), SamplingOverrides(num=2)).num_samples == 2


class _Toy(torch.nn.Module):
    num_classes, null_class, in_channels, input_size = 3, 3, 1, 4

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t, y=None):
        return x * 0.1 * self.w


def test_generate_records_the_settings_it_applied_and_keywords_build_the_same():
    cfg = _cfg(cfg_scale=2.0)
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", 100), learn_sigma=False)
    settings = SamplingSettings.from_config(cfg, SamplingOverrides(num=5, seed=2, respacing="ddim3"))
    record: dict = {}
    torch.manual_seed(0)  # eta > 0: DDIM draws fresh noise each step
    images, labels = generate(_Toy(), diffusion, settings, progress=False, record=record)
    assert {k: record[k] for k in settings.applied()} == settings.applied()
    assert record["cfg_scale"] == 2.0 and record["respacing"] == "ddim3" and record["labels"] == "balanced"
    torch.manual_seed(0)
    again, _ = generate(_Toy(), diffusion, _cfg(cfg_scale=2.0, respacing="ddim3"), 5, seed=2, progress=False)
    assert images.shape == (5, 4, 4, 1) and np.array_equal(images, again)
    with pytest.raises(TypeError):
        generate(_Toy(), diffusion, settings, 5, progress=False)
