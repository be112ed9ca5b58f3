"""Sampling options of #28: the guidance interval, flow matching's time shift and the adaptive dopri5 solver."""
import math

import numpy as np
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.cli import main
from dtr_plugins.core.config import config_from_dict
from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.errors import ConfigError, UserError
from dtr_plugins.core.flow import FlowMatching, shifted
from dtr_plugins.core.guided_sampling import GuidanceInterval, _guided
from dtr_plugins.core.process import GaussianProcess, check_solver_options
from dtr_plugins.core.sampling_settings import SamplingOverrides, SamplingSettings, SolverSettings
from dtr_plugins.sampling.sample import generate
from dtr_plugins.sampling.sample_checks import check_options, check_sampling

from ..conftest import write
from .test_config import GOOD


class Toy(torch.nn.Module):
    """A class-dependent linear model that logs the timesteps and batch size of each call."""

    num_classes, null_class, in_channels, input_size = 3, 3, 1, 4

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.calls = []

    def forward(self, x, t, y=None):
        self.calls.append((t.detach().double().cpu().clone(), x.shape[0]))
        return -self.w * x + 0.1 * (y.float() - 1).view(-1, 1, 1, 1)


def _flow_run(solver, noise, y):
    model = Toy()
    out = FlowMatching().sample(model, noise.shape, solver, noise=noise, model_kwargs={"y": y}, progress=False)
    return out, model.calls


def test_guidance_interval_guides_inside_only_and_saves_calls_outside():
    noise, y = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2])
    plain = SolverSettings("euler", "4")
    unguided, _ = _flow_run(plain, noise, y)
    guided, calls = _flow_run(SolverSettings("euler", "4", cfg_scale=3.0), noise, y)
    assert [n for _, n in calls] == [4] * 4  # cond + uncond every step
    nowhere, calls = _flow_run(SolverSettings("euler", "4", cfg_scale=3.0, guidance_interval=(0.9, 1.0)), noise, y)
    torch.testing.assert_close(nowhere, unguided)  # grid 0, .25, .5, .75: never inside
    assert [n for _, n in calls] == [2] * 4  # the conditional half alone: one evaluation per row
    everywhere, _ = _flow_run(SolverSettings("euler", "4", cfg_scale=3.0, guidance_interval=(0.0, 1.0)), noise, y)
    torch.testing.assert_close(everywhere, guided)
    part, calls = _flow_run(SolverSettings("euler", "4", cfg_scale=3.0, guidance_interval=(0.4, 0.6)), noise, y)
    assert [n for _, n in calls] == [2, 2, 4, 2]  # only t = 0.5 is guided
    assert not torch.allclose(part, unguided) and not torch.allclose(part, guided)


def test_guided_rows_mix_per_row_when_a_batch_straddles_the_interval():
    model = Toy()
    x, y = torch.ones(2, 1, 2, 2), torch.tensor([0, 2])
    t = torch.tensor([0.2, 0.8])
    mixed = _guided(model, {"y": y}, 2.0, None, None, 1, GuidanceInterval(0.5, 1.0, lambda t: t))(x, t, y=y)
    cond = model(x, t, y=y)
    full = _guided(model, {"y": y}, 2.0, None, None, 1)(x, t, y=y)
    torch.testing.assert_close(mixed[0], cond[0])
    torch.testing.assert_close(mixed[1], full[1])


def test_gaussian_interval_is_over_sigma_of_the_training_step():
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", 100), learn_sigma=False)
    t = torch.tensor([0, 50, 99])
    abar = diffusion.alphas_cumprod[[0, 50, 99]]
    np.testing.assert_allclose(diffusion.sigma_of(t).numpy(), np.sqrt((1 - abar) / abar))
    sigma_mid = float(diffusion.sigma_of(torch.tensor([50])))
    model, noise, y = Toy(), torch.randn(2, 1, 4, 4), torch.tensor([0, 1])
    diffusion.sample(model, noise.shape, SolverSettings("ddim", "ddim10", cfg_scale=2.0,
                                                        guidance_interval=(0.0, sigma_mid)),
                     noise=noise, model_kwargs={"y": y}, progress=False)
    for steps, rows in model.calls:  # model steps 90, 80, ..., 0: guided (4 rows) exactly where sigma <= sigma_50
        assert rows == (4 if float(diffusion.sigma_of(steps.long()[:1])) <= sigma_mid else 2)
    assert sorted({rows for _, rows in model.calls}) == [2, 4]


def test_time_shift_follows_sd3_with_noise_at_t0():
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    out = shifted(t, 3.0)
    u = 1 - t
    torch.testing.assert_close(out, 1 - 3 * u / (1 + 2 * u))
    assert out[0] == 0 and out[-1] == 1 and bool((out[1:-1] < t[1:-1]).all())  # more of the grid near noise
    torch.testing.assert_close(shifted(t, 1.0), t)
    noise = torch.randn(1, 1, 4, 4)
    _, calls = _flow_run(SolverSettings("euler", "4", time_shift=3.0), noise, torch.tensor([1]))
    seen = torch.tensor([float(c[0]) for c, _ in calls], dtype=torch.float64)
    torch.testing.assert_close(seen, out[:-1].float().double())


def test_dopri5_integrates_the_ode_within_tolerance_and_counts_evaluations():
    torch.manual_seed(0)
    noise, y = torch.randn(2, 1, 4, 4), torch.tensor([1, 1])  # y = 1: the velocity is -0.3 x, x(1) = x(0) e^-0.3
    out, calls = _flow_run(SolverSettings("dopri5", "50", clip_denoised=False, atol=1e-7, rtol=1e-6), noise, y)
    torch.testing.assert_close(out, noise * math.exp(-0.3), atol=1e-5, rtol=1e-5)
    loose, loose_calls = _flow_run(SolverSettings("dopri5", "50", atol=1e-2, rtol=1e-2), noise, y)
    assert len(loose_calls) < len(calls)
    assert FlowMatching().solver_steps(SolverSettings("dopri5", "50")) is None  # adaptive: not known in advance


def _cfg(diffusion, **sample):
    return config_from_dict({"name": "t", "backbone": {"name": "dit", "input_size": 4, "patch_size": 2,
                                                       "hidden_size": 16, "depth": 1, "num_heads": 2,
                                                       "in_channels": 1, "num_classes": 3},
                             "data": {"name": "synthetic"}, "diffusion": {"name": diffusion}, "sample": sample})


def test_generate_records_the_options_and_the_function_evaluations():
    cfg = _cfg("flow_matching", sampler="dopri5", cfg_scale=2.0, guidance_interval=[0.2, 0.9], atol=1e-4,
               rtol=1e-3)
    settings = SamplingSettings.from_config(cfg, SamplingOverrides(num=3, batch_size=2))
    record: dict = {}
    generate(Toy(), FlowMatching(), settings, progress=False, record=record)
    assert record["guidance_interval"] == [0.2, 0.9] and (record["atol"], record["rtol"]) == (1e-4, 1e-3)
    assert record["time_shift"] == 1.0 and len(record["nfe_per_batch"]) == 2 and min(record["nfe_per_batch"]) >= 6
    assert settings.describe() == "dopri5-atol0.0001-rtol0.001-gi0.2-0.9"
    shifted_settings = SamplingSettings.from_config(_cfg("flow_matching"), SamplingOverrides(time_shift=3.0))
    assert shifted_settings.describe() == "euler50-shift3" and shifted_settings.key("time_shift") == "--time-shift"


@pytest.mark.parametrize("sample, line", [
    ({"guidance_interval": [2.0, 1.0]}, "sample.guidance_interval: [2, 1] is not allowed; give 0 <= lo < hi"),
    ({"time_shift": 0}, "sample.time_shift"),
    ({"atol": -1}, "sample.atol"),
    ({"time_shift": 2.0}, "sample.time_shift: 2 shifts flow_matching's time grid; the gaussian process needs 1.0"),
    ({"sampler": "dopri5"}, "sample.sampler: 'dopri5' (adaptive ODE) is a flow_matching sampler; the gaussian "
                            "process has no probability-flow ODE solver"),
])
def test_bad_options_are_one_config_line(sample, line):
    with pytest.raises(ConfigError) as info:
        _cfg("gaussian", **sample)
    assert line in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("sample, line", [
    ({"guidance_interval": [0.2, 1.5]}, "sample.guidance_interval: [0.2, 1.5] is over flow_matching's time t"),
    ({"sampler": "euler_maruyama", "time_shift": 3.0}, "sample.time_shift: 3 shifts the fixed time grid of euler, "
                                                       "heun; the 'euler_maruyama' sampler needs 1.0"),
    ({"sampler": "dopri5", "time_shift": 3.0}, "the 'dopri5' sampler needs 1.0"),
])
def test_flow_refusals(sample, line):
    with pytest.raises(ConfigError, match="sample.") as info:
        _cfg("flow_matching", **sample)
    assert line in str(info.value)


def test_validate_finds_them_and_exits_2(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", GOOD + "sample: {time_shift: 3.0}\n")
    with pytest.raises(ConfigError, match=f"{path}: sample.time_shift: 3 shifts"):
        dp.load_config(path)
    assert main(["validate", str(path), "--config-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sample.time_shift" in err


def test_options_are_checked_and_named_as_flags():
    with pytest.raises(UserError, match="--guidance-interval: \\[0.5, 0.5\\] is not allowed"):
        check_options(SamplingOverrides(guidance_interval=(0.5, 0.5)), device=None)
    with pytest.raises(UserError, match="--rtol: nan is not allowed; give a finite number > 0"):
        check_options(SamplingOverrides(rtol=float("nan")), device=None)
    settings = SamplingSettings.from_config(_cfg("gaussian"), SamplingOverrides(time_shift=2.0))
    with pytest.raises(ConfigError, match="^--time-shift: 2 shifts flow_matching's time grid"):
        check_sampling(GaussianProcess(steps=100), settings)
    solver = SolverSettings("euler", "8", guidance_interval=(0.1, 0.2))

    class Plain:  # a process without SupportsSolverOptions: only the defaults
        pass
    with pytest.raises(ConfigError, match="sample.guidance_interval: .* is not applied by this process"):
        check_solver_options(Plain(), solver)  # type: ignore[arg-type]
    check_solver_options(Plain(), SolverSettings("euler", "8"))  # type: ignore[arg-type]


def test_dtr_sample_flags_reach_the_overrides():
    from dtr_plugins.cli import build_parser

    args = build_parser().parse_args(["sample", "runs/x", "--guidance-interval", "0.1", "0.5", "--time-shift", "2",
                                      "--atol", "1e-5", "--rtol", "1e-4", "--sampler", "dopri5"])
    assert (args.guidance_interval, args.time_shift, args.atol, args.rtol) == ([0.1, 0.5], 2.0, 1e-5, 1e-4)
