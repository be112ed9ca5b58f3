"""Flow matching as a process plugin: SiT parity, continuous-time routing, training and CLI errors."""
import importlib.util
import json

import numpy as np
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.compose import build_diffusion, build_model
from dtr_plugins.core.continuous_routing import ContinuousTasks, grid_rows
from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.flow import FlowMatching
from dtr_plugins.core.process import GaussianProcess
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.strategies.dtr import SlidingWindow, window_starts
from dtr_plugins.strategies.random import RandomRouting

from ..conftest import FIXTURES, ROOT, write

TOL = 1e-5


def _toy_class():
    spec = importlib.util.spec_from_file_location("make_sit_fixture", FIXTURES / "make_sit_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ToyVelocity


@pytest.fixture(scope="module")
def sit():
    ref = torch.load(FIXTURES / "sit_transport_reference.pt", weights_only=True)
    model = _toy_class()()
    model.load_state_dict(ref["toy_state_dict"])
    return ref, model.eval()


# ------------------------------------------------------------------------------ parity with SiT
def test_fixture_records_the_sit_commit(sit):
    ref, _ = sit
    commit = "".join(f"{int(v):08x}" for v in ref["sit_commit"])
    assert commit == "947f95bd3a510e9af441d38c1e9f72e0eee873c5"
    assert commit in (FIXTURES / "README.md").read_text()


def test_loss_matches_sit_training_losses(sit):
    ref, model = sit
    terms = FlowMatching().training_losses(model, ref["x1"], ref["t"], model_kwargs={"y": ref["y"]}, noise=ref["x0"])
    assert terms["loss"].shape == (4,)
    torch.testing.assert_close(terms["loss"], ref["loss"], atol=TOL, rtol=0)
    assert torch.equal(terms["mse"], terms["loss"])


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_ode_samplers_match_sit(sit, sampler, steps):
    ref, model = sit
    out = FlowMatching().sample(model, ref["z"].shape, sampler=sampler, respacing=str(steps), noise=ref["z"],
                                model_kwargs={"y": ref["y"]}, clip_denoised=False, progress=False)
    torch.testing.assert_close(out, ref[f"{sampler}_{steps}"], atol=TOL, rtol=0)


def test_heun_with_guidance_on_three_channels_matches_sit(sit):
    ref, model = sit
    out = FlowMatching().sample(model, ref["z"].shape, sampler="heun", respacing=8, noise=ref["z"],
                                model_kwargs={"y": ref["y"], "y_null": 10}, cfg_scale=4.0, cfg_channels="first3",
                                clip_denoised=False, progress=False)
    torch.testing.assert_close(out, ref["heun_8_cfg4_first3"], atol=TOL, rtol=0)
    plain = FlowMatching().sample(model, ref["z"].shape, sampler="heun", respacing=8, noise=ref["z"],
                                  model_kwargs={"y": ref["y"]}, clip_denoised=False, progress=False)
    assert (out - plain).abs().max() > 1e-2  # guidance changed something


def test_euler_maruyama_matches_sit_sde(sit):
    ref, model = sit
    torch.manual_seed(3)  # the fixture drew the SDE's Wiener increments after the same seed
    out = FlowMatching().sample(model, ref["z"].shape, sampler="euler_maruyama", respacing=10, noise=ref["z"],
                                model_kwargs={"y": ref["y"]}, clip_denoised=False, progress=False)
    torch.testing.assert_close(out, ref["sde_euler_10"], atol=TOL, rtol=0)


def test_training_times():
    torch.manual_seed(0)
    t = FlowMatching().timestep_sampler().sample(4096)
    assert t.dtype == torch.float32 and t.min() >= 0 and t.max() < 1 and abs(t.mean() - 0.5) < 0.02
    torch.manual_seed(0)
    ln = FlowMatching(time_sampling="logit_normal", logit_mean=1.0).timestep_sampler().sample(4096)
    u = 1 - ln
    assert abs(torch.logit(u.double()).mean() - 1.0) < 0.05 and abs(torch.logit(u.double()).std() - 1.0) < 0.05


def test_loss_bucket_orders_clean_to_noisy():
    flow = FlowMatching()
    assert flow.loss_bucket(torch.tensor([1.0, 0.95, 0.5, 0.0]), 10).tolist() == [0, 0, 5, 9]


# --------------------------------------------------------------------------- continuous routing
@pytest.mark.parametrize("num_tasks", [2, 10, 1000])
@pytest.mark.parametrize("channels", [7, 64, 384])
@pytest.mark.parametrize("alpha,beta", [(4.0, 0.8), (1.0, 0.5), (0.5, 0.3), (2.5, 1.0)])
def test_continuous_dtr_window_equals_table_at_grid_points(num_tasks, channels, alpha, beta):
    strategy = SlidingWindow(alpha=alpha, beta=beta)
    u = torch.arange(num_tasks, dtype=torch.float64) / (num_tasks - 1)
    assert torch.equal(strategy.mask_for_u(u, channels), strategy.mask_table(num_tasks, channels))


def test_continuous_dtr_window_between_grid_points():
    strategy = SlidingWindow(alpha=4.0, beta=0.8)
    u = torch.tensor([0.0, 0.3, 0.7071, 1.0], dtype=torch.float64)
    mask = strategy.mask_for_u(u, 100)
    n = 80
    starts = [round(v ** 4 * (100 - n)) for v in u.tolist()]  # 0, 0.162 -> 0, 0.25*20=5, 20
    assert starts == [0, 0, 5, 20]
    for row, start in zip(mask, starts):
        assert row.nonzero().flatten().tolist() == list(range(start, start + n))
    # continuous u is not quantised to a 10-row grid: u = 0.7071 starts at 5, its nearest row (6/9) at 4
    assert window_starts(10, 100, 4.0, 0.8)[6] == 4


def test_static_tables_use_the_nearest_grid_row():
    T = 10
    assert grid_rows(torch.tensor([0.0, 1 / 9, 0.04 / 9 + 4 / 9, 0.6 / 9 + 4 / 9, 1.0]), T).tolist() == [0, 1, 4, 5, 9]
    plan = RoutingPlan(RandomRouting(beta=0.5, seed=1), [16, 16], num_tasks=T,
                       continuous=ContinuousTasks(RandomRouting(beta=0.5, seed=1), data_at_one=True))
    t = torch.tensor([1.0, 1 - 3.3 / 9, 0.0])  # u = 0, 3.3/9, 1 -> rows 0, 3, 9
    got = plan.gather(t, torch.float32)
    want = plan.gather(torch.tensor([0, 3, 9]), torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_plan_routes_float_time_by_noise_level():
    strategy = SlidingWindow(alpha=4.0, beta=0.8)
    t = torch.tensor([0.0, 0.25, 0.9, 1.0])
    exact = RoutingPlan(strategy, [32, 32], 1000, continuous=ContinuousTasks(strategy, exact=True))
    masks = exact.gather(t, torch.float32)
    want = strategy.mask_for_u(1 - t.double(), 32).float()
    assert torch.equal(masks[0], want) and masks[1] is masks[0]
    grid = RoutingPlan(strategy, [32], 10, continuous=ContinuousTasks(strategy, exact=False))
    assert torch.equal(grid.gather(t, torch.float32)[0], grid.gather(torch.tensor([9, 7, 1, 0]), torch.float32)[0])
    with pytest.raises(ValueError, match="float times"):
        RoutingPlan(strategy, [32], 10).gather(t, torch.float32)


# ------------------------------------------------------------------------------- process plugin
TINY = """\
name: tiny-flow
seed: 3
backbone: {name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, in_channels: 1,
           num_classes: 4, class_dropout_prob: 0.1}
routing: {name: dtr, alpha: 4.0, beta: 0.8}
diffusion: {name: flow_matching, steps: 100}
data: {name: synthetic, num_samples: 64, image_size: 8, num_classes: 4}
train: {steps: 6, batch_size: 8, lr: 1.0e-3, log_every: 2, ckpt_every: 3, ema_warmup: true}
sample: {sampler: heun, respacing: "3", cfg_scale: 2.0, num_samples: 8, batch_size: 8}
eval: {at_end: false}
"""


def tiny_config(tmp_path, *overrides):
    path = write(tmp_path / "tiny.yaml", TINY)
    return dp.load_config(path, overrides=[f"output_dir={tmp_path / 'runs'}", *overrides])


def test_gaussian_is_the_default_process_and_unchanged():
    cfg = dp.load_config(ROOT / "configs" / "dit_digits.yaml")
    assert cfg.diffusion.name == "gaussian" and cfg.diffusion.steps == 1000
    process = build_diffusion(cfg)
    assert isinstance(process, GaussianProcess) and isinstance(process, GaussianDiffusion)
    assert np.array_equal(process.betas, get_named_beta_schedule("linear", 1000)) and process.learn_sigma
    model = build_model(cfg)
    assert model.plan.continuous is None and model.plan.num_tasks == 1000


def test_flow_config_builds_a_continuous_dtr_model():
    cfg = dp.load_config(ROOT / "configs" / "flow_dit_digits.yaml")
    assert cfg.diffusion.name == "flow_matching" and cfg.backbone.params["learn_sigma"] is False
    model = build_model(cfg)
    assert isinstance(build_diffusion(cfg), FlowMatching) and model.plan.continuous.exact
    x = torch.randn(2, 1, 8, 8)
    assert model(x, torch.tensor([0.1, 0.8]), y=torch.tensor([1, 2])).shape == x.shape


def test_adm_unet_routes_flow_time_continuously():
    cfg = dp.load_config(ROOT / "configs" / "flow_dit_digits.yaml", overrides=[
        "backbone={name: adm_unet, preset: small, image_size: 8, in_channels: 1, num_classes: 10}"])
    model = build_model(cfg).eval()
    seen = []
    gather = model.plan.gather
    model.plan.gather = lambda t, dtype: (seen.append(t), gather(t, dtype))[1]
    t = torch.tensor([0.3, 0.7])
    out = model(torch.randn(2, 1, 8, 8), t, y=torch.tensor([0, 1]))
    assert out.shape == (2, 1, 8, 8) and torch.equal(seen[0], t)


def test_flow_run_trains_resumes_bit_exactly_and_samples(tmp_path, run_cli):
    straight = dp.train(tiny_config(tmp_path / "a"), progress=False)
    dp.train(tiny_config(tmp_path / "b", "train.steps=3"), progress=False)
    resumed = dp.train(tiny_config(tmp_path / "b"), resume=True, progress=False)
    for key in ("model", "ema"):
        a = torch.load(straight / "checkpoints" / "0000006.pt", weights_only=True)[key]
        b = torch.load(resumed / "checkpoints" / "0000006.pt", weights_only=True)[key]
        assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if "loss" in r]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) for r in records) and len(records[-1]["loss_bucket"]) == 10
    (heldout,) = [r["heldout"] for r in lines if "heldout" in r]  # at the end (heldout_every 200 > 6 steps)
    assert heldout["time"] == "continuous" and np.isfinite(heldout["total"])
    code, _, err = run_cli("sample", str(straight), "--num", "6", "--out", str(tmp_path / "s"))
    assert code == 0, err
    data = np.load(tmp_path / "s" / "samples.npz")
    assert data["arr_0"].shape == (6, 8, 8, 1) and data["arr_0"].dtype == np.uint8
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert info["sampler"] == "heun" and info["respacing"] == "3"


@pytest.mark.parametrize("override,needle", [
    ("diffusion.name=flow_matchin", "diffusion.name: unknown process 'flow_matchin' (known: flow_matching, gaussian)"),
    ("diffusion.time_sampling=beta", "diffusion.time_sampling"),
    ("diffusion.logit_std=-1", "diffusion.logit_std"),
    ("diffusion.schedule=cosine", "diffusion.schedule: unknown key"),
    ("loss_weighting.name=min_snr", "loss_weighting.name: 'min_snr' does not apply to diffusion 'flow_matching'"),
    ("sample.sampler=ddim", "sample.sampler: 'ddim' is not a flow_matching sampler"),
    ("sample.respacing=ddim25", "sample.respacing"),
    ("backbone.learn_sigma=true", "backbone.learn_sigma"),
])
def test_bad_process_settings_are_one_line_exit_2(tmp_path, run_cli, override, needle):
    path = write(tmp_path / "tiny.yaml", TINY)
    code, _, err = run_cli("train", str(path), "--set", f"output_dir={tmp_path / 'runs'}", "--set", override)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_gaussian_sampler_names_are_checked_too(tmp_path, run_cli):
    path = write(tmp_path / "tiny.yaml", TINY.replace("name: flow_matching, steps: 100", "steps: 100"))
    code, _, err = run_cli("train", str(path), "--set", "sample.sampler=heun", "--set", "sample.respacing=ddim5")
    assert code == 2 and "sample.sampler: 'heun' is not a gaussian sampler (allowed: ddpm, ddim)" in err


def test_routing_x_process_suite_plans_six_matching_runs_per_seed():
    from dtr_plugins.experiments.suite import load_suite

    suite = load_suite(ROOT / "configs" / "suites" / "routing_x_process_digits.yaml")
    plan = sorted((r.config.diffusion.name, r.config.sample.sampler, r.config.routing.name, r.config.seed)
                  for r in suite.runs)
    assert plan == sorted([(p, s, r, seed) for p, s in (("gaussian", "ddim"), ("flow_matching", "heun"))
                           for r in ("vanilla", "dtr", "random") for seed in (0, 1, 2)])
    assert {r.config.eval.heldout_every for r in suite.runs} == {100}
    for run in suite.runs:
        flow = run.config.diffusion.name == "flow_matching"
        assert run.config.backbone.params["learn_sigma"] is (not flow)


def test_routing_x_process_pairs_stay_within_one_process():
    """The report pairs a flow run with the flow vanilla run of its seed, never with the gaussian one: with
    the suite's own run ids and assignments, gaussian FIDs near 0 and flow FIDs near 100 give differences
    near 1 (a cross-process pair would give about 100)."""
    from dtr_plugins.experiments.compare import RunRecord, compare_runs, pair_runs
    from dtr_plugins.experiments.compare_records import axes_of
    from dtr_plugins.experiments.suite import load_suite

    suite = load_suite(ROOT / "configs" / "suites" / "routing_x_process_digits.yaml")
    records = []
    for run in suite.runs:
        fid = (100.0 if run.config.diffusion.name == "flow_matching" else 0.0) + run.config.seed * 10
        fid += {"vanilla": 0.0, "dtr": -1.0, "random": 1.0}[run.config.routing.name]
        axes = axes_of(run.id, run.assignment, run.config.to_dict())
        records.append(RunRecord(run.id, run.config.seed, axes, {"frechet_inception_distance": [(400, fid)]}))
    groups, skipped = pair_runs(records)
    assert skipped == [] and len(groups) == 4  # {dtr, random} x {gaussian, flow_matching}
    by_id = {r.id: r for r in suite.runs}
    for (label, setting), pairs in groups.items():
        assert len(pairs) == 3 and dict(setting)["diffusion"] in ("gaussian", "flow_matching"), (label, setting)
        for run, ref in pairs:
            a, b = by_id[run.id].config, by_id[ref.id].config
            assert ref.axes["routing"] == "vanilla" and run.seed == ref.seed
            assert (a.diffusion.name, a.sample.sampler) == (b.diffusion.name, b.sample.sampler)
    result = compare_runs(records, metrics=["frechet_inception_distance"])
    means = {(d.strategy.split("-")[0], dict(d.setting)["diffusion"]): d.mean for d in result.differences}
    assert means == pytest.approx({("dtr", "gaussian"): -1.0, ("dtr", "flow_matching"): -1.0,
                                   ("random", "gaussian"): 1.0, ("random", "flow_matching"): 1.0})
