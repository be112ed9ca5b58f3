"""Learned routing (contract v2) end to end: optimizer groups, aux losses in metrics.jsonl, exact resume,
sampling through exported tables, with the example package's ``learned_window`` strategy."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.compose import build_components, build_model
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.sampling.sample import generate

from ..conftest import tiny_dit_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dtr-learned-window-example"

#: the shared tiny DiT run (tests/conftest.py) with learned routing and no held-out loss
TINY = {"name": "tiny-learned", "eval": {"heldout_every": 0},
        "routing": {"name": "learned_window", "alpha": 4.0, "beta": 0.8, "sharpness": 1.0, "smooth_weight": 1.0,
                    "lr": 0.05}}


@pytest.fixture(scope="module")
def registry():
    sys.path.insert(0, str(EXAMPLE))
    try:
        window = importlib.import_module("dtr_learned_window_example.window")
    finally:
        sys.path.remove(str(EXAMPLE))
    return build_registry([(window, "dtr-learned-window-example", "0.1.0")])


def tiny_config(tmp_path, registry, *overrides):
    path = tiny_dit_config(tmp_path, "tiny.yaml", **TINY)
    return dp.load_config(path, overrides=[f"output_dir={tmp_path / 'runs'}", *overrides], registry=registry)


def final(run_dir: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(sorted((run_dir / "checkpoints").glob("*.pt"))[-1], weights_only=True)[key]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_learned_run_trains_the_router_logs_aux_and_resumes_exactly(tmp_path, registry):
    cfg = tiny_config(tmp_path / "a", registry)
    init = build_model(cfg, registry).state_dict()
    straight = dp.train(cfg, registry=registry, progress=False)
    model = final(straight)
    router = sorted(k for k in model if k.startswith("routing."))
    assert router == ["routing.learned.logits.0", "routing.learned.logits.1"]
    for key in router:  # the router learned (its own lr), and its EMA is kept
        assert not torch.equal(model[key], init[key])
        assert key in final(straight, "ema")
    ckpt = torch.load(straight / "checkpoints" / "0000006.pt", weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups][-1] == pytest.approx(0.05) and groups[-1]["weight_decay"] == 0.0
    assert len(groups[-1]["params"]) == 2  # the two logit tables, nowhere else
    assert sum(len(g["params"]) for g in groups[:-1]) == sum(1 for k in model if not k.startswith("routing.")) - 1
    logged = [r for r in records(straight) if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    assert all(r["aux/smooth"] > 0 for r in logged)

    first = dp.train(tiny_config(tmp_path / "b", registry, "train.steps=3"), registry=registry, progress=False)
    resumed = dp.train(tiny_config(tmp_path / "b", registry), registry=registry, resume=True, progress=False)
    for key in ("model", "ema"):
        a, b = final(straight, key), final(resumed, key)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
    assert first == resumed


def _roughness(state: dict[str, torch.Tensor]) -> float:
    gates = [torch.sigmoid(v) for k, v in state.items() if k.startswith("routing.learned.")]
    return float(sum((g[1:] - g[:-1]).square().mean() for g in gates))


def test_smoothness_loss_moves_the_gates_only_with_a_weight(tmp_path, registry):
    rough = dp.train(tiny_config(tmp_path / "w0", registry, "routing.smooth_weight=0.0"), registry=registry,
                     progress=False)
    smooth = dp.train(tiny_config(tmp_path / "w1", registry, "routing.smooth_weight=50.0"), registry=registry,
                      progress=False)
    init = _roughness(build_model(tiny_config(tmp_path / "w0", registry), registry).state_dict())
    assert all(r["aux/smooth"] == 0.0 for r in records(rough) if "loss" in r)
    assert all(r["aux/smooth"] > 0.0 for r in records(smooth) if "loss" in r)
    # weighted, the loss smooths the gates over neighbouring timesteps; at weight 0 only the denoising loss
    # moves them (a few rows per step), and they stay about as rough as DTR's hard-edged initial window
    assert _roughness(final(smooth)) < 0.7 * init and _roughness(final(smooth)) < 0.7 * _roughness(final(rough))
    assert _roughness(final(rough)) > 0.9 * init


def test_exported_tables_sample_like_the_module(tmp_path, registry):
    cfg = tiny_config(tmp_path, registry)
    parts = build_components(cfg, registry)
    model, diffusion = parts.model.eval(), parts.diffusion
    with torch.no_grad():  # move the router off its init so that the gates matter
        for p in model.plan.learned.parameters():
            p.add_(torch.randn_like(p))
    record: dict = {}
    images, labels = generate(model, diffusion, cfg, 8, seed=1, progress=False, record=record)
    assert record["learned_routing"] == "task tables"
    model.plan.export_tables = lambda: False  # sampling keeps running the module
    record = {}
    again, _ = generate(model, diffusion, cfg, 8, seed=1, progress=False, record=record)
    assert record["learned_routing"] == "module"
    assert (images == again).all()


def test_bad_learned_param_is_one_line(tmp_path, registry):
    with pytest.raises(ConfigError) as err:
        tiny_config(tmp_path, registry, "routing.smooth_weight=-1.0")
    message = str(err.value)
    assert "\n" not in message and "routing.smooth_weight" in message and "greater than or equal to 0" in message
