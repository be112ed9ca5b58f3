"""Stochastic samplers against guided-diffusion with every noise draw recorded.

``fixtures/diffusion_sampling_reference.pt`` (see fixtures/README.md) holds guided-diffusion's ``p_sample`` /
``ddim_sample`` single steps and whole loops for the ``linear`` and ``cosine`` schedules: DDPM over the
``"250"`` respacing (the sampler of every paper config), DDIM-50 with eta 1 and DDIM-25 with eta 0.5. Feeding
the recorded draws back pins the noise scale of each sampler (sigma_t of DDPM's learned-range variance, DDIM's
sigma_t(eta)), the clipped x_0 prediction, and the draw order of the loops.
"""
from __future__ import annotations

import pytest
import torch

from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule, space_timesteps

from ..conftest import FIXTURES

SAMPLERS = {"ddpm": ("ddpm", "250", 0.0), "ddim_eta1": ("ddim", "ddim50", 1.0), "ddim_eta05": ("ddim", "ddim25", 0.5)}
CASES = [(schedule, name) for schedule in ("linear", "cosine") for name in SAMPLERS]
ATOL = 1e-5


class Toy(torch.nn.Module):
    """The fixture's model: a 3x3 conv (4 -> 8 channels: epsilon and the variance interpolation) times 1 + t/1000."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t.clone())
        return self.net(x) * (1 + t / 1000).view(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURES / "diffusion_sampling_reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def toy(ref):
    model = Toy()
    model.load_state_dict(ref["toy_state_dict"])
    return model.eval()


def process(schedule: str) -> GaussianDiffusion:
    return GaussianDiffusion(get_named_beta_schedule(schedule, 1000), learn_sigma=True)


@pytest.mark.parametrize(("schedule", "name"), CASES)
def test_respacing_matches(ref, schedule, name):
    _, respacing, _ = SAMPLERS[name]
    r = ref[schedule][name]
    assert r["respacing"] == respacing
    assert space_timesteps(1000, respacing) == r["use_timesteps"].tolist()
    spaced = process(schedule).respaced(respacing)
    assert spaced.timestep_map.tolist() == r["use_timesteps"].tolist()


@pytest.mark.parametrize(("schedule", "name"), CASES)
def test_single_steps(ref, toy, schedule, name):
    """Given x_t, the respaced index i and the recorded draw: the step's sample and its x_0 prediction."""
    sampler, respacing, eta = SAMPLERS[name]
    r = ref[schedule][name]
    spaced = process(schedule).respaced(respacing)
    x_t = ref["x_t"]
    assert len(r["steps"]) == 3
    for i, step in r["steps"].items():
        t = torch.full((x_t.shape[0],), int(i), dtype=torch.long)
        toy.seen.clear()
        with torch.no_grad():
            pred_xstart = spaced.p_mean_variance(toy, x_t, t, clip_denoised=True)["pred_xstart"]
            if sampler == "ddpm":
                sample = spaced.ddpm_step(toy, x_t, t, clip_denoised=True, noise=step["noise"])
            else:
                sample = spaced.ddim_step(toy, x_t, t, clip_denoised=True, eta=eta, noise=step["noise"])
        # the model sees the original training-step index, as guided-diffusion's _WrappedModel does
        assert toy.seen[0].tolist() == [int(r["use_timesteps"][int(i)])] * x_t.shape[0]
        # x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps: one fp32 rounding of eps (2^-23 relative, and the
        # convolution's summation order differs between CPUs) is amplified by sqrt(1/abar - 1), 157 at the
        # linear schedule's last step; the bound grows with it and stays ATOL where the factor is small
        atol = ATOL + 2.0 ** -23 * float(spaced.sqrt_recipm1_alphas_cumprod[int(i)])
        torch.testing.assert_close(pred_xstart, step["pred_xstart"], rtol=0, atol=atol, msg=f"pred_xstart, i={i}")
        torch.testing.assert_close(sample, step["sample"], rtol=0, atol=atol, msg=f"sample, i={i}")


@pytest.mark.parametrize(("schedule", "name"), CASES)
def test_whole_loop(ref, toy, schedule, name):
    """From z with the recorded draws fed in order: the loop's final sample, and one draw per step."""
    sampler, respacing, eta = SAMPLERS[name]
    r = ref[schedule][name]
    draws = iter(r["loop_noise"])
    used = []

    def step_noise(x: torch.Tensor) -> torch.Tensor:
        drawn = next(draws)
        assert drawn.shape == x.shape
        used.append(drawn)
        return drawn

    out = process(schedule).sample(toy, tuple(ref["z"].shape), sampler=sampler, respacing=respacing,
                                   noise=ref["z"], eta=eta, clip_denoised=True, progress=False,
                                   step_noise=step_noise)
    assert len(used) == len(r["loop_noise"]) == len(r["use_timesteps"])
    torch.testing.assert_close(out, r["loop_sample"], rtol=0, atol=ATOL)


def test_step_noise_is_the_only_randomness():
    """With recorded draws, the global RNG state does not change the sample (nothing else draws)."""
    torch.manual_seed(0)
    model = Toy().eval()
    z = torch.randn(2, 4, 8, 8)
    draws = torch.randn(25, 2, 4, 8, 8)
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        it = iter(draws)
        outs.append(process("linear").sample(model, (2, 4, 8, 8), sampler="ddim", respacing="ddim25", noise=z,
                                             eta=0.5, progress=False, step_noise=lambda x, it=it: next(it)))
    assert torch.equal(outs[0], outs[1])
