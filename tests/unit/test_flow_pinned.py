"""Flow matching and continuous routing, pinned by mutation testing.

The Euler-Maruyama sampler by value (the SiT parity fixture has as many latent channels as images, so these use a
batch unlike the channel count), step counts at the limit, the ``meta`` device in place of a GPU, the progress
bar; the loss's defaults and refusals; the time-to-noise-level map of continuous routing and the arguments it
passes to a strategy's closed form."""
import pytest
import torch

from dtr_plugins.core.continuous_routing import ContinuousTasks
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.flow import FlowMatching
from dtr_plugins.core.sampling_settings import SolverSettings


class Linear(torch.nn.Module):
    """A velocity field ``v(x, t) = a x + b t`` (per channel), model-shaped: ``forward(x, t)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.a = torch.linspace(-0.5, 0.7, channels).view(1, -1, 1, 1)
        self.b = torch.linspace(0.3, -0.2, channels).view(1, -1, 1, 1)

    def forward(self, x, t):
        return self.a.to(x.device) * x + self.b.to(x.device) * t.view(-1, 1, 1, 1)


def reference_sde(model, x, steps, h=0.04):
    """SiT's Euler-Maruyama, written out: drift ``v + (1 - t) score`` with ``score = (t v - x) / (1 - t)``,
    diffusion ``sqrt(2 (1 - t))``, on ``linspace(0, 1 - h, steps)``, then one mean step of size ``h``."""
    grid = torch.linspace(0.0, 1.0 - h, steps)
    dt = grid[1] - grid[0]
    for i in range(steps - 1):
        t = torch.full((x.shape[0],), float(grid[i]))
        v = model(x, t)
        tt = t.view(-1, 1, 1, 1)
        drift = v + (1 - tt) * (tt * v - x) / (1 - tt)
        x = x + drift * dt + torch.sqrt(2 * (1 - tt)) * torch.randn_like(x) * torch.sqrt(dt)
    t = torch.full((x.shape[0],), float(grid[-1]))
    v = model(x, t)
    tt = t.view(-1, 1, 1, 1)
    return x + (v + (1 - tt) * (tt * v - x) / (1 - tt)) * h


@pytest.mark.parametrize("steps", [2, 5])
def test_euler_maruyama_by_hand_with_batch_unlike_channels(steps):
    model, noise = Linear(2), torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    out = FlowMatching().sample(model, noise.shape, sampler="euler_maruyama", respacing=steps, noise=noise,
                                clip_denoised=False, progress=False)
    torch.manual_seed(7)
    torch.testing.assert_close(out, reference_sde(model, noise.clone(), steps), atol=1e-6, rtol=0)
    assert FlowMatching().solver_steps(SolverSettings("euler_maruyama", str(steps))) == (
        steps, steps)


def test_network_calls_per_sampler():
    flow = FlowMatching()
    assert flow.solver_steps(SolverSettings("euler", "10")) == (10, 10)
    assert flow.solver_steps(SolverSettings("heun", "10")) == (10, 20)


def test_one_step_is_refused_with_the_key():
    with pytest.raises(ConfigError) as err:
        FlowMatching().sample(Linear(2), (1, 2, 4, 4), sampler="euler_maruyama", respacing=1, progress=False)
    assert str(err.value) == "sample.respacing: euler_maruyama needs at least 2 steps"


def test_runs_on_the_device_of_its_input():
    """On the ``meta`` device (a stand-in for a GPU) every tensor the sampler makes lives beside the input."""
    out = FlowMatching().sample(Linear(2), (3, 2, 4, 4), sampler="euler_maruyama", respacing=3,
                                noise=torch.empty(3, 2, 4, 4, device="meta"), clip_denoised=False, progress=False)
    assert out.device.type == "meta" and out.shape == (3, 2, 4, 4)


def test_progress_bar_is_drawn_when_asked_and_only_then(capsys):
    kwargs = {"sampler": "euler_maruyama", "respacing": 3, "noise": torch.zeros(1, 2, 4, 4), "clip_denoised": False}
    FlowMatching().sample(Linear(2), (1, 2, 4, 4), progress=False, **kwargs)
    assert "euler_maruyama 3 steps" not in capsys.readouterr().err
    FlowMatching().sample(Linear(2), (1, 2, 4, 4), progress=True, **kwargs)
    assert "euler_maruyama 3 steps" in capsys.readouterr().err


def test_training_loss_draws_its_noise_and_refuses_integer_times_and_wrong_shapes():
    model, x = Linear(2), torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.1, 0.5, 0.9])
    torch.manual_seed(5)
    drawn = FlowMatching().training_losses(model, x, t)["loss"]
    torch.manual_seed(5)
    given = FlowMatching().training_losses(model, x, t, noise=torch.randn_like(x))["loss"]
    assert torch.equal(drawn, given) and drawn.shape == (3,)
    with pytest.raises(ValueError) as err:
        FlowMatching().training_losses(model, x, torch.tensor([0, 1, 2]))
    assert str(err.value) == "flow matching takes float times t in [0, 1], got integer timesteps"
    with pytest.raises(ValueError) as err:
        FlowMatching().training_losses(lambda x, t: torch.cat([x, x], 1), x, t)
    assert str(err.value) == ("model output (3, 4, 4, 4): flow matching needs the input shape (3, 2, 4, 4) "
                              "(velocity; build the backbone with learn_sigma false)")


def test_logit_normal_times_take_both_parameters():
    sampler = FlowMatching(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8).timestep_sampler()
    assert repr(sampler) == "logit_normal(mean=0.5, std=0.8)"


def test_flow_routes_by_noise_level_one_minus_t():
    from dtr_plugins.strategies.dtr import SlidingWindow

    assert repr(FlowMatching().continuous_tasks(SlidingWindow())) == "continuous(u=1-t, closed form)"
    assert repr(FlowMatching(routing="grid").continuous_tasks(SlidingWindow())) == "continuous(u=1-t, nearest row)"


class Recorder:
    """A closed-form strategy that writes the layer it was asked for into the mask (channel ``layer`` on, and
    channel ``num_layers`` too)."""

    def mask_for_u(self, u, channels, *, layer=0, num_layers=1):
        mask = torch.zeros(u.shape[0], channels, dtype=torch.bool)
        mask[:, layer] = True
        mask[:, num_layers] = True
        return mask


def test_noise_levels_are_clamped_and_follow_the_time_convention_and_device():
    t = torch.tensor([-0.5, 0.25, 1.5])
    assert ContinuousTasks(Recorder(), data_at_one=True).noise_level(t).tolist() == [1.0, 0.75, 0.0]
    assert ContinuousTasks(Recorder(), data_at_one=False).noise_level(t).tolist() == [0.0, 0.25, 1.0]
    assert ContinuousTasks(Recorder(), exact=False).rows(torch.empty(2, device="meta"), 5).device.type == "meta"
    mask = ContinuousTasks(Recorder()).closed_form(torch.zeros(2), 8, layer=2, num_layers=5)
    assert mask[0].nonzero().flatten().tolist() == [2, 5]


def test_log_snr_of_the_linear_path_and_the_constructor_defaults_and_refusals():
    import numpy as np

    from dtr_plugins.core.flow import flow_steps
    from dtr_plugins.core.phema import power_beta

    u = np.array([0.1, 0.5, 0.8], dtype=np.float32)
    got = FlowMatching().log_snr(u)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, 2 * np.log((1 - u.astype(np.float64)) / u.astype(np.float64)), rtol=1e-12)
    assert FlowMatching().num_timesteps == 1000  # rows of the routing grid over u
    assert power_beta(0.05, 1.0) == 0.0  # the first update (t_delta defaults to one step) copies the weights
    with pytest.raises(ConfigError) as err:
        FlowMatching(time_sampling="beta")
    assert str(err.value) == "diffusion.time_sampling: 'beta' (allowed: uniform, logit_normal)"
    with pytest.raises(ConfigError) as err:
        FlowMatching(routing="exact")
    assert str(err.value) == "diffusion.routing: 'exact' (allowed: continuous, grid)"
    with pytest.raises(ConfigError) as err:
        FlowMatching().sample(Linear(2), (1, 2, 4, 4), sampler="rk4", respacing=3, progress=False)
    assert "(allowed: euler, heun, euler_maruyama, dopri5)" in str(err.value)
    assert flow_steps(" 7 ") == 7
    for bad in (None, ""):
        with pytest.raises(ConfigError, match=r"\(got (None|'');"):
            flow_steps(bad)
