"""Diffusion math: parity with guided-diffusion, hand-computed schedules, respacing, samplers, guidance."""
import math

import numpy as np
import pytest
import torch

from dtr_plugins.core.config import DiffusionConfig
from dtr_plugins.core.diffusion import GaussianDiffusion, _guided, get_named_beta_schedule, space_timesteps
from dtr_plugins.core.errors import ConfigError

from ..conftest import FIXTURES


class Toy(torch.nn.Module):
    """The fixture's model: a 3x3 conv whose output is scaled by 1 + t / 1000."""

    def __init__(self, out_channels=8, num_classes=None):
        super().__init__()
        self.net = torch.nn.Conv2d(4, out_channels, 3, padding=1)
        self.num_classes = num_classes
        self.null_class = num_classes  # the extra embedding row is the null label (SupportsGuidance)
        if num_classes is not None:  # one extra row: the null label
            self.emb = torch.nn.Embedding(num_classes + 1, out_channels)
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(t.clone())
        out = self.net(x) * (1 + t / 1000).view(-1, 1, 1, 1)
        if y is not None:
            out = out + self.emb(y)[:, :, None, None]
        return out


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURES / "diffusion_guided_reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def toy(ref):
    model = Toy()
    model.load_state_dict(ref["toy_state_dict"])
    return model.eval()


def conditional_toy(seed=0):
    torch.manual_seed(seed)
    return Toy(num_classes=5).eval()


# ------------------------------------------------------------------------------------------------
# parity with guided-diffusion
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_parity_with_guided_diffusion(ref, toy, schedule):
    r = ref[schedule]
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(steps=1000, schedule=schedule, learn_sigma=True))
    np.testing.assert_allclose(diffusion.betas, r["betas"].numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(diffusion.posterior_variance, r["posterior_variance"].numpy(), rtol=1e-12, atol=1e-15)

    with torch.no_grad():
        terms = diffusion.training_losses(toy, ref["x0"], ref["t"], noise=ref["noise"])
    assert set(terms) == {"loss", "mse", "vb"}
    for key in ("loss", "mse", "vb"):
        assert terms[key].shape == (6,)
        torch.testing.assert_close(terms[key], r[key], rtol=1e-5, atol=1e-7)

    assert space_timesteps(1000, "ddim50") == r["ddim50_timesteps"].tolist()
    sample = diffusion.sample(toy, tuple(ref["z"].shape), sampler="ddim", respacing="ddim50", noise=ref["z"],
                              clip_denoised=True, progress=False)
    torch.testing.assert_close(sample, r["ddim50_sample"], rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# schedules and posterior, by hand
# ------------------------------------------------------------------------------------------------

def test_named_schedules_by_hand():
    lin = get_named_beta_schedule("linear", 1000)
    assert lin.dtype == np.float64 and lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02)
    lin = get_named_beta_schedule("linear", 250)  # scaled by 1000 / T
    assert lin[0] == pytest.approx(4e-4) and lin[-1] == pytest.approx(0.08)
    assert lin[1] - lin[0] == pytest.approx((0.08 - 4e-4) / 249)

    cos = get_named_beta_schedule("cosine", 10)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cos[0] == pytest.approx(1 - f(0.1) / f(0.0), rel=1e-12)
    assert cos[4] == pytest.approx(1 - f(0.5) / f(0.4), rel=1e-12)
    assert cos[-1] == 0.999  # 1 - f(1)/f(0.9) = 1, capped

    with pytest.raises(ConfigError, match="linear"):
        get_named_beta_schedule("linear", 10)  # beta_T = 2
    with pytest.raises(ConfigError, match="unknown beta schedule"):
        get_named_beta_schedule("quadratic", 10)


def test_posterior_and_snr_by_hand():
    d = GaussianDiffusion(np.array([0.1, 0.2, 0.5]), learn_sigma=False)
    # abar = [0.9, 0.72, 0.36]
    np.testing.assert_allclose(d.alphas_cumprod, [0.9, 0.72, 0.36])
    np.testing.assert_allclose(d.posterior_variance, [0.0, 0.2 * 0.1 / 0.28, 0.5 * 0.28 / 0.64])
    np.testing.assert_allclose(d.posterior_log_variance_clipped, np.log([0.02 / 0.28, 0.02 / 0.28, 0.21875]))
    np.testing.assert_allclose(d.posterior_mean_coef1,
                               [0.1 * 1 / 0.1, 0.2 * math.sqrt(0.9) / 0.28, 0.5 * math.sqrt(0.72) / 0.64])
    np.testing.assert_allclose(d.posterior_mean_coef2, [0.0, 0.1 * math.sqrt(0.8) / 0.28, 0.28 * math.sqrt(0.5) / 0.64])
    np.testing.assert_allclose(d.fixed_large_variance, [0.02 / 0.28, 0.2, 0.5])
    torch.testing.assert_close(d.snr(torch.tensor([0, 1, 2])), torch.tensor([9.0, 0.72 / 0.28, 0.5625]))

    x0, xt = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), -1.0)
    mean, var, logvar = d.q_posterior_mean_variance(x0, xt, torch.tensor([1]))
    expect = 0.2 * math.sqrt(0.9) / 0.28 * 0.5 - 0.1 * math.sqrt(0.8) / 0.28
    torch.testing.assert_close(mean, torch.full_like(x0, expect))
    assert var.item() == pytest.approx(0.02 / 0.28) and logvar.item() == pytest.approx(math.log(0.02 / 0.28))

    noise = torch.ones(1, 1, 2, 2)
    xt = d.q_sample(x0, torch.tensor([2]), noise)
    torch.testing.assert_close(xt, torch.full_like(x0, 0.6 * 0.5 + 0.8))


def test_respaced_betas_by_hand():
    d = GaussianDiffusion(np.array([0.1, 0.2, 0.5]), learn_sigma=False)
    spaced = d.respaced(use_timesteps=[0, 2])
    np.testing.assert_allclose(spaced.betas, [0.1, 1 - 0.36 / 0.9])
    np.testing.assert_allclose(spaced.alphas_cumprod, [0.9, 0.36])
    assert spaced.timestep_map.tolist() == [0, 2]
    assert d.respaced(None) is d and d.respaced("3") is d
    assert d.respaced("2").timestep_map.tolist() == [0, 2]  # sections: round(0), round(2)
    assert d.respaced(use_timesteps=[2, 0]) is spaced  # cached


# ------------------------------------------------------------------------------------------------
# respacing strings
# ------------------------------------------------------------------------------------------------

def test_space_timesteps_strings():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "ddim3") == [0, 4, 8]
    assert space_timesteps(10, "4") == [0, 3, 6, 9]
    assert space_timesteps(1000, "3") == [0, 500, 999]  # round(499.5) = 500
    assert space_timesteps(7, "2,3") == [0, 3, 4, 5, 6]  # sections of 4 and 3 steps
    steps = space_timesteps(300, "10,15,20")
    assert len(steps) == 45 and steps[:10] == list(range(0, 100, 11)) and steps[-1] == 299
    assert space_timesteps(1000, "250") == sorted({round(i * 999 / 249) for i in range(250)})
    assert space_timesteps(5, "") == space_timesteps(5, None) == space_timesteps(5, "5") == [0, 1, 2, 3, 4]
    for bad in ("ddim7", "11", "abc", "ddimx", "0"):
        with pytest.raises(ConfigError):
            space_timesteps(10, bad)


# ------------------------------------------------------------------------------------------------
# the model sees the original indices
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler,respacing,expect", [
    ("ddim", "ddim5", [800, 600, 400, 200, 0]),
    ("ddpm", "3", [999, 500, 0]),
])
def test_model_receives_original_timesteps(sampler, respacing, expect):
    torch.manual_seed(0)
    model = Toy(out_channels=4)
    d = GaussianDiffusion(get_named_beta_schedule("linear", 1000), learn_sigma=False)
    d.sample(model, (2, 4, 4, 4), sampler=sampler, respacing=respacing, progress=False)
    assert [t.tolist() for t in model.seen] == [[v, v] for v in expect]
    assert all(t.dtype == torch.long for t in model.seen)


def test_ddpm_sampler_runs_and_is_finite(toy):
    torch.manual_seed(0)
    d = GaussianDiffusion(get_named_beta_schedule("cosine", 1000), learn_sigma=True)
    out = d.sample(toy, (2, 4, 8, 8), sampler="ddpm", respacing="20", progress=False)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    torch.manual_seed(0)
    again = d.sample(toy, (2, 4, 8, 8), sampler="ddpm", respacing="20", progress=False)
    torch.testing.assert_close(out, again)
    out = d.sample(toy, (2, 4, 8, 8), sampler="ddim", respacing="10", eta=1.0, progress=True)
    assert torch.isfinite(out).all()


def test_fixed_variance_losses_and_channel_check(toy):
    d = GaussianDiffusion(get_named_beta_schedule("linear", 1000), learn_sigma=False)
    x0, t = torch.randn(3, 4, 8, 8).clamp(-1, 1), torch.tensor([0, 10, 999])
    terms = d.training_losses(Toy(out_channels=4), x0, t)
    assert set(terms) == {"loss", "mse"} and torch.equal(terms["loss"], terms["mse"])
    with pytest.raises(ValueError, match="expected 4 channels"):
        d.training_losses(toy, x0, t)  # 8 output channels without learn_sigma


def test_vb_trains_only_the_variance():
    """The VB term sees the epsilon half through a stop-gradient (frozen_out)."""
    d = GaussianDiffusion(get_named_beta_schedule("linear", 1000), learn_sigma=True)
    out = torch.nn.Parameter(0.1 * torch.randn(2, 8, 4, 4))
    terms = d.training_losses(lambda x, t: out * 1.0, torch.rand(2, 4, 4, 4) * 2 - 1, torch.tensor([0, 300]))
    terms["vb"].sum().backward()
    assert out.grad[:, :4].abs().max() == 0 and out.grad[:, 4:].abs().max() > 0


# ------------------------------------------------------------------------------------------------
# classifier-free guidance
# ------------------------------------------------------------------------------------------------

def test_cfg_scale_one_is_no_guidance():
    model = conditional_toy()
    d = GaussianDiffusion(get_named_beta_schedule("linear", 1000), learn_sigma=True)
    z, y = torch.randn(3, 4, 4, 4), torch.tensor([0, 1, 4])
    x, t = torch.randn(3, 4, 4, 4), torch.tensor([5, 500, 999])
    torch.testing.assert_close(_guided(model, {"y": y}, 1.0, None, None, 4)(x, t, y=y), model(x, t, y=y))
    plain = d.sample(model, z.shape, noise=z, model_kwargs={"y": y}, respacing="ddim10", progress=False)
    guided = d.sample(model, z.shape, noise=z, model_kwargs={"y": y, "y_null": 5}, cfg_scale=1.0,
                      respacing="ddim10", progress=False)
    torch.testing.assert_close(plain, guided)
    strong = d.sample(model, z.shape, noise=z, model_kwargs={"y": y}, cfg_scale=4.0, respacing="ddim10", progress=False)
    assert not torch.allclose(plain, strong)


def test_cfg_doubles_batch_with_null_label():
    model = conditional_toy()
    d = GaussianDiffusion(get_named_beta_schedule("linear", 1000), learn_sigma=True)
    calls = []
    real_forward = model.forward
    model.forward = lambda x, t, y=None: (calls.append(y.clone()), real_forward(x, t, y))[1]
    d.sample(model, (2, 4, 4, 4), model_kwargs={"y": torch.tensor([1, 3])}, cfg_scale=2.0, respacing="ddim2",
             progress=False)
    assert [c.tolist() for c in calls] == [[1, 3, 5, 5]] * 2  # null label = num_classes
    calls.clear()
    d.sample(model, (2, 4, 4, 4), model_kwargs={"y": torch.tensor([1, 3]), "y_null": 0}, cfg_scale=2.0,
             respacing="ddim2", progress=False)
    assert [c.tolist() for c in calls] == [[1, 3, 0, 0]] * 2
    with pytest.raises(ConfigError, match="class labels"):
        d.sample(model, (2, 4, 4, 4), cfg_scale=2.0, respacing="ddim2", progress=False)


def test_cfg_first3_vs_all_differ_only_in_fourth_channel():
    model = conditional_toy()
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([100, 900]), torch.tensor([2, 3])
    out_all = _guided(model, {"y": y}, 4.0, None, None, 4)(x, t, y=y)
    out_3 = _guided(model, {"y": y}, 4.0, 3, None, 4)(x, t, y=y)
    cond = model(x, t, y=y)
    torch.testing.assert_close(out_all[:, :3], out_3[:, :3])
    assert not torch.allclose(out_all[:, 3], out_3[:, 3])
    torch.testing.assert_close(out_3[:, 3], cond[:, 3])  # unguided epsilon channel: conditional
    torch.testing.assert_close(out_all[:, 4:], cond[:, 4:])  # learned variance: conditional
    torch.testing.assert_close(out_3[:, 4:], cond[:, 4:])

    # one DDIM step (t = 0 only): each output channel depends on its own epsilon channel
    d = GaussianDiffusion(get_named_beta_schedule("linear", 1000), learn_sigma=True)
    z = torch.randn(2, 4, 4, 4) * 0.1
    kw = {"y": y}
    a = d.sample(model, z.shape, noise=z, model_kwargs=kw, cfg_scale=4.0, cfg_channels="all", respacing="ddim1",
                 progress=False)
    b = d.sample(model, z.shape, noise=z, model_kwargs=kw, cfg_scale=4.0, cfg_channels="first3", respacing="ddim1",
                 progress=False)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3], b[:, 3])
    with pytest.raises(ConfigError, match="cfg_channels"):
        d.sample(model, z.shape, model_kwargs=kw, cfg_scale=4.0, cfg_channels="first2", progress=False)
