"""Flow matching's Euler-Maruyama sampler by value (pinned by mutation testing): the SiT parity fixture has as
many latent channels as images, so these use a batch unlike the channel count, step counts at the limit, the
``meta`` device in place of a GPU, and the progress bar."""
import pytest
import torch

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
