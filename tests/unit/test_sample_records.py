"""What sampling records per image: network evaluations counted from the images fed to the network."""
import pytest
import torch

from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.flow import FlowMatching
from dtr_plugins.sampling.sample import _CountingModel


class _Toy(torch.nn.Module):
    num_classes, null_class = 3, 3

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x, t, y=None):
        return torch.zeros(x.shape[0], self.out_channels, *x.shape[2:])


def _per_image(process, sampler, respacing, scale, out_channels, n=3):
    counted = _CountingModel(_Toy(out_channels))
    kwargs = {"y": torch.zeros(n, dtype=torch.long)}
    process.sample(counted, (n, 1, 4, 4), sampler=sampler, respacing=respacing, cfg_scale=scale,
                   model_kwargs=kwargs, progress=False, noise=torch.zeros(n, 1, 4, 4))
    return counted.rows // n, counted.calls


@pytest.mark.parametrize("sampler,respacing,scale,expected", [
    ("ddim", "ddim5", 1.0, 5), ("ddim", "ddim5", 2.0, 10), ("ddpm", "3", 4.0, 6), ("ddpm", "3", 1.0, 3)])
def test_guided_diffusion_costs_two_evaluations_per_step(sampler, respacing, scale, expected):
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", 1000), learn_sigma=False)
    per_image, calls = _per_image(diffusion, sampler, respacing, scale, out_channels=1)
    assert per_image == expected and calls == int(respacing.removeprefix("ddim"))


@pytest.mark.parametrize("sampler,scale,expected", [
    ("euler", 1.0, 4), ("euler", 2.0, 8), ("heun", 1.0, 8), ("heun", 2.0, 16)])
def test_flow_samplers_count_every_velocity_evaluation(sampler, scale, expected):
    per_image, _ = _per_image(FlowMatching(), sampler, 4, scale, out_channels=1)
    assert per_image == expected
