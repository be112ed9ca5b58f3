"""Gaussian-diffusion behaviour that mutation testing (``make mutate``) found untested: defaults, devices,
model wrappers, classifier-free-guidance plumbing and the one-line errors. See docs/testing.md."""
import pytest
import torch

from dtr_plugins.core.config import DiffusionConfig
from dtr_plugins.core.diffusion import GaussianDiffusion, _guided, _null_label, get_named_beta_schedule, sampling_start
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
    assert _null_label(Labelled(null_class=7), None) == 7
    assert _null_label(Labelled(num_classes=10), None) == 10
    assert _null_label(Labelled(module=Labelled(null_class=7)), None) == 7  # DistributedDataParallel
    assert _null_label(Labelled(_orig_mod=Labelled(null_class=6)), None) == 6  # torch.compile
    assert _null_label(Labelled(module=Labelled(num_classes=3)), None) == 3
    assert _null_label(Labelled(null_class=7), 2) == 2  # an explicit y_null wins


def test_null_label_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError) as info:
        _null_label(Labelled(null_class=None), None)
    assert str(info.value) == ("sample.cfg_scale: this backbone was built without a null class (label dropout), "
                               "so classifier-free guidance is not available; use cfg_scale 1.0")
    with pytest.raises(ConfigError) as info:
        _null_label(Labelled(), None)
    assert str(info.value) == ("classifier-free guidance needs the null label: pass model_kwargs['y_null'] "
                               "or use a model with a num_classes attribute")


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
