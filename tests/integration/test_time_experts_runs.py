"""``time_experts`` end to end on the shared tiny DiT run: training reaches both experts and a resume is bit-exact;
meta.json records both parameter counts and who owns which timesteps; sampling switches experts mid-trajectory
(DDPM, DDIM; flow Euler and Heun); the export carries every expert and loads back; ``dtr masks`` draws the owners;
``dtr validate`` refuses bad settings with one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.sampling.sample import generate, load_run

from ..conftest import tiny_dit_config

ROUTING = {"name": "time_experts", "num_experts": 2}
SAMPLE = {"num_samples": 4, "batch_size": 4}


def config(folder: Path, *overrides: str, **changes):
    path = tiny_dit_config(folder, **{"routing": ROUTING, "eval": {"heldout_every": 0}, **changes})
    return dp.load_config(path, overrides=[f"output_dir={folder / 'runs'}", *overrides])


def final(run_dir: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(sorted((run_dir / "checkpoints").glob("*.pt"))[-1], weights_only=True)[key]


def experts_called(run_dir: Path, cfg, sampler: str, respacing: str) -> list[list[int]]:
    """Sample 4 images from the run's EMA weights with ``sampler``; the experts of every network call."""
    _, model, diffusion, _ = load_run(run_dir, device="cpu")
    strategy = model.plan.time_experts
    calls: list[list[int]] = []
    original = strategy.expert_of
    strategy.expert_of = lambda tasks: (calls.append(sorted(set(original(tasks).tolist()))), original(tasks))[1]
    cfg = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"sampler": sampler, "respacing": respacing})})
    images, _ = generate(model, diffusion, cfg, 4, seed=1, progress=False)
    assert images.shape[0] == 4
    return calls


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The tiny gaussian run with two experts (6 steps), shared by the tests below."""
    return dp.train(config(tmp_path_factory.mktemp("te") / "a"), progress=False)


def test_training_reaches_both_experts_and_resumes_bit_exactly(trained, tmp_path):
    model = final(trained)
    init = dp.build_model(config(tmp_path)).state_dict()
    moved = lambda prefix: [k for k in model if k.startswith(prefix) and not torch.equal(model[k], init[k])]  # noqa: E731
    assert moved("blocks.") and moved("routing.learned.experts.0.blocks:")  # both experts trained
    dp.train(config(tmp_path / "b", "train.steps=3"), progress=False)
    resumed = dp.train(config(tmp_path / "b"), resume=True, progress=False)
    for key in ("model", "ema"):
        a, b = final(trained, key), final(resumed, key)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key


def test_meta_records_both_parameter_counts_and_the_owners(trained, tmp_path):
    meta = json.loads((trained / "meta.json").read_text())
    dense = sum(p.numel() for p in dp.build_model(config(tmp_path, "routing.name=vanilla")).parameters())
    assert meta["parameters"]["active"] == dense < meta["parameters"]["total"]
    assert meta["time_experts"] == [{"expert": 0, "timesteps": [0, 50]}, {"expert": 1, "timesteps": [50, 100]}]


def test_ddim_and_ddpm_switch_experts_mid_trajectory(trained, tmp_path):
    for sampler, respacing in (("ddim", "ddim5"), ("ddpm", "5")):
        calls = experts_called(trained, config(tmp_path), sampler, respacing)
        assert calls[0] == [1] and calls[-1] == [0] and all(len(c) == 1 for c in calls)


def test_export_carries_every_expert_and_loads_back(trained, tmp_path, run_cli):
    out = tmp_path / "export"
    code, _, err = run_cli("export", str(trained), "--out", str(out))
    assert code == 0, err
    record = json.loads((out / "config.json").read_text())["_dtr_export"]
    meta = json.loads((trained / "meta.json").read_text())
    assert record["parameters"] == meta["parameters"] and record["time_experts"] == meta["time_experts"]
    pipe = dp.DTRPipeline.from_pretrained(out)
    ema, loaded = final(trained, "ema"), pipe.model.state_dict()
    assert any(k.startswith("routing.learned.experts.0.") for k in loaded)
    assert all(torch.equal(v, ema[k]) for k, v in loaded.items() if k in ema)
    assert "time_experts" in (out / "README.md").read_text()


def test_masks_draws_the_expert_of_every_timestep(trained, tmp_path, run_cli):
    code, _, err = run_cli("masks", str(trained), "--out", str(tmp_path / "masks.png"))
    assert code == 0, err
    assert (tmp_path / "masks.png").stat().st_size > 0


def test_flow_matching_run_switches_experts_with_euler_and_heun(tmp_path):
    flow = {"name": "flow_matching", "steps": 100}
    cfg = config(tmp_path, "train.steps=2", diffusion=flow, sample={"sampler": "euler", "respacing": "3", **SAMPLE},
                 routing={**ROUTING, "boundaries": "uniform_logsnr"})
    run = dp.train(cfg, progress=False)
    assert json.loads((run / "meta.json").read_text())["time_experts"][1]["noise_level"] == [0.5, 1.0]
    for sampler in ("euler", "heun"):
        calls = experts_called(run, cfg, sampler, "3")
        assert calls[0] == [1] and calls[-1] == [0]


def test_validate_refuses_bad_settings_with_one_line(tmp_path, run_cli):
    path = tiny_dit_config(tmp_path, routing=ROUTING)
    cases = [("routing.num_experts=1", "num_experts"), ("routing.granularity=layer", "granularity"),
             ("routing.boundaries=halves", "boundaries"),
             ("routing.num_experts=32 diffusion.steps=25", "routing.num_experts: 32 experts"),
             ("routing.boundaries=measured", "routing.measured_from: boundaries: measured needs the run directory"),
             (f"routing.measured_from={tmp_path / 'nowhere'}", "routing.measured_from: only read with boundaries")]
    for override, message in cases:
        sets = [arg for item in override.split() for arg in ("--set", item)]
        code, _, err = run_cli("validate", str(path), *sets, "--set", f"output_dir={tmp_path / 'runs'}")
        assert code == 2 and len(err.strip().splitlines()) == 1, (override, err)
        assert message in err and "Traceback" not in err, (override, err)
    code, _, err = run_cli("validate", str(path), "--set", "routing.boundaries=measured", "--set",
                           f"routing.measured_from={tmp_path / 'nowhere'}", "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "routing.measured_from:" in err, err


def test_measured_boundaries_come_from_a_trained_runs_heldout_losses(tmp_path):
    dense = dp.train(config(tmp_path / "dense", "train.steps=2", "routing.name=vanilla",
                            eval={"heldout_every": 2, "at_end": False}), progress=False)
    bands = [r["heldout"] for r in map(json.loads, (dense / "metrics.jsonl").read_text().splitlines())
             if "heldout" in r][-1]
    losses = [bands[f"band{b}"] for b in range(bands["num_bands"])]
    model = dp.build_model(config(tmp_path, "routing.boundaries=measured", f"routing.measured_from={dense}"))
    strategy = model.plan.time_experts
    share = sum(losses[: int(strategy.cuts[0] * len(losses))]) / sum(losses)  # whole bands below the cut
    band = int(strategy.cuts[0] * len(losses))
    inside = (float(strategy.cuts[0]) * len(losses) - band) * losses[band] / sum(losses)
    assert share + inside == pytest.approx(0.5)  # each of the two experts owns half of the held-out loss
