"""``dydit_width`` end to end on the shared tiny DiT run: the FLOPs loss is logged and trains the routers, a
resume is bit-exact (the target schedule's counter included), sampling runs the per-timestep tables at their
active width through the sliced path, ``dtr masks`` draws the width per timestep, and the same under flow
matching."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import dtr_plugins as dp
from dtr_plugins.core.routing import ActiveUnits
from dtr_plugins.sampling.sample import generate, load_run

from ..conftest import tiny_dit_config

#: the router biases start at 1 (not upstream's 15) so that a few steps of the FLOPs loss switch units off
ROUTING = {"name": "dydit_width", "site": "heads_mlp", "target": 0.5, "bias_init": 1.0, "warmup_steps": 2,
           "full_width_steps": 1, "gate_lr": 0.05}


def config(folder: Path, *overrides: str, **changes):
    path = tiny_dit_config(folder, routing=ROUTING, eval={"heldout_every": 0}, **changes)
    return dp.load_config(path, overrides=[f"output_dir={folder / 'runs'}", *overrides])


def final(run_dir: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(sorted((run_dir / "checkpoints").glob("*.pt"))[-1], weights_only=True)[key]


def sliced_sampling(run_dir: Path, cfg) -> list[ActiveUnits | None]:
    """Sample 4 images from the run's EMA weights; the sliced routes the model took (one list per call)."""
    _, model, diffusion, _ = load_run(run_dir, device="cpu")
    plan = model.plan
    taken: list = []
    original = plan.learned_active_units
    plan.learned_active_units = lambda t, device=None: (taken.append(original(t, device)), taken[-1])[1]
    record: dict = {}
    images, _ = generate(model, diffusion, cfg, 4, seed=1, progress=False, record=record)
    assert record["learned_routing"] == "task tables" and images.shape[0] == 4
    return taken


def test_gaussian_run_logs_the_flops_loss_resumes_exactly_samples_sliced_and_draws_masks(tmp_path, run_cli):
    straight = dp.train(config(tmp_path / "a"), progress=False)
    model = final(straight)
    assert int(model["routing.learned.forwards"]) == 6
    logged = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    flops = [r["aux/dydit_flops"] for r in logged if "loss" in r]
    assert len(flops) == 3 and all(v >= 0 for v in flops) and flops[0] > 0  # later 0: all but unit 0 off = 0.5
    init = dp.build_model(config(tmp_path / "a"))
    moved = [k for k in model if k.startswith("routing.learned.") and "routers" in k
             and not torch.equal(model[k], init.state_dict()[k])]
    assert moved  # the FLOPs loss reaches the routers through the straight-through gates

    dp.train(config(tmp_path / "b", "train.steps=3"), progress=False)
    resumed = dp.train(config(tmp_path / "b"), resume=True, progress=False)
    for key in ("model", "ema"):
        a, b = final(straight, key), final(resumed, key)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key

    taken = sliced_sampling(straight, config(tmp_path / "a"))
    assert taken and all(routes is not None for routes in taken)  # every call shares one timestep
    # the trained routers switched units off: those steps ran only the active heads' and units' weight slices
    assert any(isinstance(u, ActiveUnits) and u.count < u.total for routes in taken for u in routes)

    code, out, err = run_cli("masks", str(straight), "--out", str(tmp_path / "masks.png"))
    assert code == 0, err
    assert (tmp_path / "masks.png").stat().st_size > 0 and "learned gates of 4 routed layers" in out


def test_flow_matching_run_trains_and_samples(tmp_path, run_cli):
    flow = {"name": "flow_matching", "steps": 100}
    run = dp.train(config(tmp_path, "train.steps=4", diffusion=flow,
                          sample={"sampler": "euler", "respacing": "3", "num_samples": 4, "batch_size": 4}),
                   progress=False)
    assert int(final(run)["routing.learned.forwards"]) == 4
    code, _, err = run_cli("sample", str(run), "--num", "4", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["learned_routing"] == "task tables"
