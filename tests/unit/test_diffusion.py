"""Gaussian-diffusion behaviour that mutation testing (``make mutate``) found untested: defaults, devices,
model wrappers, classifier-free-guidance plumbing and the one-line errors. See docs/testing.md."""
import numpy as np
import pytest
import torch

from dtr_plugins.core.config import DiffusionConfig
from dtr_plugins.core.diffusion import (
    GaussianDiffusion,
    _guided,
    _null_label,
    get_named_beta_schedule,
    sampling_start,
    space_timesteps,
)
from dtr_plugins.core.errors import ConfigError


def linear(T=1000, learn_sigma=True):
    return GaussianDiffusion(get_named_beta_schedule("linear", T), learn_sigma=learn_sigma)


class Const(torch.nn.Module):
    """A model returning a fixed output (eps far outside [-1, 1] makes clipping visible); records kwargs."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.kwargs = []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, **kwargs):
        self.kwargs.append(kwargs)
        return self.out.expand(x.shape[0], *self.out.shape[1:]) + 0 * self.w


# ------------------------------------------------------------------------------------------------
# construction
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("learn_sigma", [True, False])
def test_from_config_keeps_learn_sigma(learn_sigma):
    d = GaussianDiffusion.from_config(DiffusionConfig(steps=10, schedule="cosine", learn_sigma=learn_sigma))
    assert d.learn_sigma is learn_sigma and d.num_timesteps == 10
    assert repr(d) == f"GaussianDiffusion(T=10, learn_sigma={learn_sigma}, respaced=False)"


def test_repr_says_respaced():
    assert repr(linear(100).respaced("10")) == "GaussianDiffusion(T=10, learn_sigma=True, respaced=True)"


# ------------------------------------------------------------------------------------------------
# devices: tables and samples follow the tensors / the model (meta stands in for a GPU)
# ------------------------------------------------------------------------------------------------

def test_snr_follows_the_device_of_t():
    d = linear(100)
    cpu = d.snr(torch.tensor([0, 50]))
    abar = d.alphas_cumprod
    torch.testing.assert_close(cpu, torch.tensor([abar[0] / (1 - abar[0]), abar[50] / (1 - abar[50])]).float())
    meta = d.snr(torch.tensor([0, 50], device="meta"))
    assert meta.device.type == "meta" and meta.shape == (2,)
    torch.testing.assert_close(d.snr(torch.tensor([0, 50])), cpu)  # the cpu table is still the cpu one


def test_sampling_start_uses_the_models_device():
    model = Const(torch.zeros(1, 4, 2, 2)).to("meta")
    _, _, x, device = sampling_start(model, None, 1.0, "all", (2, 4, 2, 2), None, None)
    assert torch.device(device).type == "meta" and x.device.type == "meta" and x.shape == (2, 4, 2, 2)


def test_sampling_start_defaults_to_cpu_for_a_plain_function():
    _, kwargs, x, device = sampling_start(lambda x, t: x, {"y_null": 3, "z": 1}, 1.0, "all", (1, 3, 2, 2), None,
                                          None)
    assert torch.device(device) == torch.device("cpu") and x.device.type == "cpu"
    assert kwargs == {"z": 1}  # y_null is the guidance's, not the model's


def test_sampling_start_noise_decides_the_device_and_must_match_the_shape():
    noise = torch.randn(2, 4, 2, 2)
    _, _, x, device = sampling_start(lambda x, t: x, None, 1.0, "all", (2, 4, 2, 2), noise, None)
    assert x is noise or torch.equal(x, noise)
    with pytest.raises(ValueError, match=r"noise shape \(2, 4, 2, 2\) != sample shape \(1, 4, 2, 2\)"):
        sampling_start(lambda x, t: x, None, 1.0, "all", (1, 4, 2, 2), noise, None)


# ------------------------------------------------------------------------------------------------
# ddpm_step: defaults and kwargs
# ------------------------------------------------------------------------------------------------

def test_ddpm_step_clips_by_default_and_passes_model_kwargs():
    d = linear(1000, learn_sigma=False)
    model = Const(torch.full((1, 4, 2, 2), -50.0))  # eps = -50: x_0 prediction far above 1
    x, t, noise = torch.full((2, 4, 2, 2), 0.5), torch.tensor([500, 500]), torch.zeros(2, 4, 2, 2)
    default = d.ddpm_step(model, x, t, {"y": 1}, noise=noise)
    clipped = d.ddpm_step(model, x, t, {"y": 1}, clip_denoised=True, noise=noise)
    raw = d.ddpm_step(model, x, t, {"y": 1}, clip_denoised=False, noise=noise)
    torch.testing.assert_close(default, clipped)
    assert not torch.allclose(clipped, raw)
    assert model.kwargs == [{"y": 1}] * 3


# ------------------------------------------------------------------------------------------------
# classifier-free guidance: the null label and the wrappers around a backbone
# ------------------------------------------------------------------------------------------------

class Labelled:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


def test_null_label_from_the_model_or_the_wrapped_one():
    assert _null_label(Labelled(null_class=7), None, 2.0) == 7
    assert _null_label(Labelled(module=Labelled(null_class=7)), None, 2.0) == 7  # DistributedDataParallel
    assert _null_label(Labelled(_orig_mod=Labelled(null_class=6)), None, 2.0) == 6  # torch.compile
    assert _null_label(Labelled(null_class=7), 2, 2.0) == 2  # an explicit y_null wins


def test_null_label_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError) as info:
        _null_label(Labelled(null_class=None, num_classes=10), None, 2.0)
    assert str(info.value) == ("sample.cfg_scale: 2 asks for classifier-free guidance, but this backbone "
                               "(num_classes=10) has no null class (it was trained without label dropout); "
                               "use a scale of 1.0")
    for no_guidance in (Labelled(), Labelled(num_classes=10), Labelled(module=Labelled(num_classes=3))):
        with pytest.raises(ConfigError) as info:  # num_classes alone is no null label: SupportsGuidance is
            _null_label(no_guidance, None, 2.0)
        assert str(info.value) == ("classifier-free guidance needs the null label: pass model_kwargs['y_null'] "
                                   "or use a backbone with a null_class (SupportsGuidance in "
                                   "dtr_plugins/core/contracts.py)")


def test_guided_needs_labels_one_line():
    with pytest.raises(ConfigError) as info:
        _guided(Labelled(num_classes=3), {}, 2.5, None, None, 4)
    assert str(info.value) == ("cfg_scale=2.5 needs class labels (model_kwargs['y']); use cfg_scale 1 "
                               "for an unconditional model")


def test_guided_passes_extra_kwargs_and_a_tensor_null_label():
    seen = []

    def model(x, t, y, **rest):
        seen.append((y.clone(), rest))
        return torch.zeros(x.shape[0], 8, *x.shape[2:])

    y = torch.tensor([1, 2])
    guided = _guided(model, {"y": y}, 2.0, None, torch.tensor(9, dtype=torch.int32), 4)
    guided(torch.zeros(2, 4, 2, 2), torch.tensor([3, 3]), y=y, mask=True)
    (labels, rest), = seen
    assert labels.tolist() == [1, 2, 9, 9] and labels.dtype == torch.long and rest == {"mask": True}


# ------------------------------------------------------------------------------------------------
# respacing and schedules: every accepted spelling, every refusal's line
# ------------------------------------------------------------------------------------------------

def test_space_timesteps_spellings_agree():
    assert space_timesteps(10, 5) == space_timesteps(10, "5") == [0, 2, 4, 7, 9]
    assert space_timesteps(10, [2, 3]) == space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]
    assert space_timesteps(10, "ddim10") == list(range(10))  # stride 1
    assert space_timesteps(10, "ddim1") == [0]
    assert space_timesteps(10, "1") == [0] and space_timesteps(10, "1,1") == [0, 5]  # one step per section


@pytest.mark.parametrize("spec,message", [
    ("ddimx", "respacing 'ddimx': expected 'ddimN' with an integer N"),
    ("ddim7", "respacing 'ddim7': no integer stride gives exactly 7 of 10 steps"),
    ("a,b", "respacing 'a,b': expected 'N', 'N1,N2,...' or 'ddimN'"),
    ("0", "respacing '0': every section needs at least one step"),
    ("6,6", "respacing '6,6': cannot take 6 steps from a section of 5 (T = 10)"),
])
def test_space_timesteps_errors_are_one_line(spec, message):
    with pytest.raises(ConfigError) as info:
        space_timesteps(10, spec)
    assert str(info.value) == message


def test_schedule_errors_are_one_line():
    with pytest.raises(ConfigError) as info:
        get_named_beta_schedule("linear", 10)
    assert str(info.value) == ("linear schedule: T=10 gives beta_T=2 > 1 (the schedule is scaled by 1000 / T); "
                               "use T >= 20 or the cosine schedule")
    with pytest.raises(ConfigError) as info:
        get_named_beta_schedule("sigmoid", 10)
    assert str(info.value) == "unknown beta schedule 'sigmoid' (allowed: linear, cosine)"


def test_respaced_refusals():
    d = linear(100)
    with pytest.raises(ValueError) as info:
        d.respaced("10").respaced("5")
    assert str(info.value) == "respace the training process, not an already respaced one"
    for bad in ([], [-1, 5], [5, 100], [5, 10, 100]):
        with pytest.raises(ValueError) as info:
            d.respaced(use_timesteps=bad)
        assert str(info.value) == "use_timesteps must be non-empty indices in 0..99"
    assert d.respaced(use_timesteps=[99, 0, 50]).timestep_map.tolist() == [0, 50, 99]


def test_decoder_likelihood_edges_are_strict_as_in_guided_diffusion():
    """x = -0.999 and 0.999 are inner bins (guided-diffusion tests x < -0.999 and x > 0.999)."""
    from dtr_plugins.core.diffusion import _approx_std_normal_cdf, discretized_gaussian_log_likelihood

    x = torch.tensor([-0.999, 0.999, -1.0, 1.0])
    means, log_scales = torch.zeros(4), torch.full((4,), -1.0)
    inv = torch.exp(-log_scales)
    plus, minus = _approx_std_normal_cdf(inv * (x + 1 / 255)), _approx_std_normal_cdf(inv * (x - 1 / 255))
    expect = torch.stack([torch.log(plus[0] - minus[0]), torch.log(plus[1] - minus[1]),
                          torch.log(plus[2]), torch.log(1 - minus[3])])
    torch.testing.assert_close(discretized_gaussian_log_likelihood(x, means, log_scales), expect)


# ------------------------------------------------------------------------------------------------
# the process on another device; defaults of the reverse-process helpers
# ------------------------------------------------------------------------------------------------

def test_tables_follow_the_device_of_t():
    d = linear(100).respaced("10")
    t = torch.tensor([0, 9])
    cpu = d.q_sample(torch.ones(2, 1), t, torch.zeros(2, 1))
    meta = d.q_sample(torch.ones(2, 1, device="meta"), t.to("meta"), torch.zeros(2, 1, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (2, 1)
    assert d.model_timesteps(t.to("meta")).device.type == "meta"
    assert d.model_timesteps(t).tolist() == [0, 99]
    torch.testing.assert_close(d.q_sample(torch.ones(2, 1), t, torch.zeros(2, 1)), cpu)


def test_q_sample_draws_its_noise_from_the_global_generator():
    d, x0, t = linear(100), torch.ones(3, 2), torch.tensor([1, 50, 99])
    torch.manual_seed(5)
    drawn = d.q_sample(x0, t)
    torch.manual_seed(5)
    torch.testing.assert_close(drawn, d.q_sample(x0, t, torch.randn(3, 2)))


def test_channel_error_names_the_input_channels():
    d = linear(100, learn_sigma=True)
    with pytest.raises(ValueError) as info:
        d.p_mean_variance(lambda x, t: torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.tensor([5]))
    assert str(info.value) == "model output (1, 3, 8, 8): expected 6 channels for 3-channel inputs (learn_sigma=True)"


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_p_mean_variance_outputs_and_default_clipping(learn_sigma):
    d = linear(1000, learn_sigma=learn_sigma)
    C = 4
    out = torch.cat([torch.full((2, C, 2, 2), -50.0), torch.full((2, C, 2, 2), 0.3)], 1)
    out = out[:, :2 * C if learn_sigma else C]
    x, t = torch.full((2, C, 2, 2), 0.5), torch.tensor([500, 20])
    p = d.p_mean_variance(lambda x, t: out, x, t)
    assert set(p) == {"mean", "variance", "log_variance", "pred_xstart", "eps"}
    torch.testing.assert_close(p["variance"], torch.exp(p["log_variance"]))
    torch.testing.assert_close(p["eps"], out[:, :C])
    assert p["pred_xstart"].max() == 1.0  # clipped by default
    raw = d.p_mean_variance(lambda x, t: out, x, t, clip_denoised=False)
    assert raw["pred_xstart"].max() > 1.0
    torch.testing.assert_close(d.p_mean_variance_from_output(out, x, t)["mean"], p["mean"])
    assert not torch.allclose(raw["mean"], p["mean"])


def test_ddim_step_defaults_clip_and_no_noise():
    d = linear(1000, learn_sigma=False)
    model = Const(torch.full((1, 4, 2, 2), -50.0))
    x, t = torch.full((2, 4, 2, 2), 0.5), torch.tensor([500, 500])
    nan = torch.full((2, 4, 2, 2), float("nan"))
    default = d.ddim_step(model, x, t, noise=nan)  # eta = 0: deterministic, the noise is not used
    assert torch.isfinite(default).all()
    torch.testing.assert_close(default, d.ddim_step(model, x, t, clip_denoised=True, eta=0.0))
    assert not torch.allclose(default, d.ddim_step(model, x, t, clip_denoised=False))
    state = torch.get_rng_state()
    d.ddim_step(model, x, t)
    assert torch.equal(state, torch.get_rng_state())  # eta = 0 draws nothing


# ------------------------------------------------------------------------------------------------
# sampling_start: devices, guidance wiring, refusals
# ------------------------------------------------------------------------------------------------

def test_sampling_start_device_precedence():
    fn = lambda x, t: x  # noqa: E731
    _, _, x, device = sampling_start(fn, None, 1.0, "all", (1, 2), None, "meta")
    assert x.device.type == "meta" and torch.device(device).type == "meta"  # explicit device wins
    _, _, x, device = sampling_start(fn, None, 1.0, "all", (1, 2), torch.zeros(1, 2, device="meta"), None)
    assert x.device.type == "meta" and torch.device(device).type == "meta"  # then the noise's
    _, _, x, _ = sampling_start(fn, None, 1.0, "all", (1, 2), torch.zeros(1, 2), "meta")
    assert x.device.type == "meta"  # noise is moved to the device


def test_sampling_start_guides_the_epsilon_channels_only():
    def model(x, t, y):
        return torch.cat([y.float().view(-1, 1, 1, 1).expand(-1, 8, 3, 3)], 1)  # every channel = the label

    guided, kwargs, _, _ = sampling_start(model, {"y": torch.tensor([2]), "y_null": 0}, 3.0, "all", (1, 4, 3, 3),
                                          None, None)
    out = guided(torch.zeros(1, 4, 3, 3), torch.tensor([1]), **kwargs)
    assert out[:, :4].unique().tolist() == [6.0]  # 0 + 3 * (2 - 0)
    assert out[:, 4:].unique().tolist() == [2.0]  # learned variance: conditional


def test_sampling_start_cfg_channels_line():
    with pytest.raises(ConfigError) as info:
        sampling_start(lambda x, t: x, None, 1.0, "first2", (1, 2), None, None)
    assert str(info.value) == "sample.cfg_channels: 'first2' (allowed: all, first3)"


def test_linear_schedule_accepts_t_20_where_beta_t_is_1():
    betas = get_named_beta_schedule("linear", 20)
    assert betas.dtype == np.float64 and betas[-1] == 1.0 and betas[0] == pytest.approx(0.005)


def test_coefficients_in_float64_and_learned_sigma_by_default():
    d = GaussianDiffusion(np.linspace(1e-4, 0.02, 100, dtype=np.float32))
    assert d.learn_sigma is True
    assert d.betas.dtype == d.alphas_cumprod.dtype == d.posterior_variance.dtype == np.float64


def test_constructor_refusals_and_int64_timestep_map():
    for betas in ([0.0, 0.5], [0.5, 1.5], [[0.1, 0.2]]):
        with pytest.raises(ValueError) as info:
            GaussianDiffusion(np.array(betas))
        assert str(info.value) == "betas must be a 1-D array with values in (0, 1]"
    with pytest.raises(ValueError) as info:
        GaussianDiffusion(np.full(3, 0.1), timestep_map=[0, 5])
    assert str(info.value) == "timestep_map needs 3 entries, got (2,)"
    with np.errstate(divide="ignore"):  # beta = 1 is allowed (abar_T = 0: the 1 / abar tables are infinite)
        assert GaussianDiffusion(np.array([0.5, 1.0])).betas.tolist() == [0.5, 1.0]
    d = GaussianDiffusion(np.full(2, 0.1), timestep_map=np.array([0, 5], dtype=np.int32))
    assert d.timestep_map.dtype == torch.long and d.timestep_map.tolist() == [0, 5]


def test_two_step_process_clips_the_t0_variance_to_the_t1_posterior():
    betas = np.array([0.1, 0.2])
    d = GaussianDiffusion(betas)
    pv1 = 0.2 * (1 - 0.9) / (1 - 0.9 * 0.8)  # beta_1 (1 - abar_0) / (1 - abar_1)
    np.testing.assert_allclose(d.posterior_variance, [0.0, pv1])
    np.testing.assert_allclose(d.posterior_log_variance_clipped, np.log([pv1, pv1]))
    np.testing.assert_allclose(d.fixed_large_variance, [pv1, 0.2])
    one = GaussianDiffusion(np.array([0.3]))  # no t = 1: beta_0 itself
    np.testing.assert_allclose(one.fixed_large_variance, [0.3])
    np.testing.assert_allclose(one.posterior_log_variance_clipped, np.log([0.3]))
