"""Timestep-bucketed training (train.timestep_buckets, core/buckets.py): losses and every gradient equal the
masked path's in fp32 (single batch and gradient accumulation) for every static strategy, a third-party one
included; learned strategies fall back with one line; dtr validate refuses what has no bucketed execution."""
import contextlib
import copy

import numpy as np
import pytest
import torch

from dtr_plugins.compose import build_diffusion, build_model, validate_run
from dtr_plugins.core.buckets import (
    BucketedUnits,
    apply_train_buckets,
    choose_k,
    enable_train_buckets,
    split_bounds,
    timestep_keys,
    union_width,
)
from dtr_plugins.core.config import apply_overrides, config_from_dict, parse_yaml
from dtr_plugins.core.contracts import RoutingStrategy
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.strategies.dtr import SlidingWindow
from dtr_plugins.training.accumulate import forward_backward

TINY = """\
name: tiny
seed: 3
backbone: {name: dit, input_size: 8, patch_size: 2, hidden_size: 64, depth: 2, num_heads: 4, in_channels: 1,
  num_classes: 4}
routing: {name: dtr, alpha: 2.0, beta: 0.5, site: heads_mlp}
diffusion: {steps: 100, schedule: linear, learn_sigma: true}
data: {name: synthetic, num_samples: 64, image_size: 8, num_classes: 4}
eval: {at_end: false}
"""


class Stripes:
    """A third-party static strategy, written against the RoutingStrategy Protocol only: timestep ``t`` uses
    every unit ``u`` with ``(u + t // 7) % 3 != 0`` (non-contiguous rows: the index path of ActiveUnits)."""

    def mask_table(self, num_tasks: int, channels: int, *, layer: int = 0, num_layers: int = 1) -> torch.Tensor:
        t = torch.arange(num_tasks)[:, None]
        u = torch.arange(channels)[None, :]
        return (u + t // 7 + layer) % 3 != 0

    def __repr__(self) -> str:
        return "stripes()"


STATIC = {"dtr": {"alpha": 2.0, "beta": 0.5}, "random": {"beta": 0.5}, "task_specific_sharing": {"groups": 3}}


def _model(site="heads_mlp", strategy="dtr"):
    cfg = config_from_dict(apply_overrides(parse_yaml(TINY), [f"routing.site={site}"]))
    torch.manual_seed(0)
    model, diffusion = build_model(cfg), build_diffusion(cfg)
    with torch.no_grad():  # DiT zero-initialises adaLN and the output layer: every gradient would be trivial
        for p in model.parameters():
            p.normal_(0, 0.05)
    routing = Stripes() if strategy == "stripes" else default_registry().build("strategy", strategy,
                                                                                  **STATIC[strategy])
    assert isinstance(routing, RoutingStrategy)
    plan = RoutingPlan(routing, model.routed_channels(site), 100, site=site)
    model.attach_routing(plan)
    return model, diffusion, plan


def _step(model, diffusion, k, seed=5):
    """Loss, per-sample terms and every parameter's gradient of one training step (k micro-batches)."""
    net = copy.deepcopy(model).train()
    weighting = default_registry().build("loss_weighting", "constant")
    g = torch.Generator().manual_seed(seed)
    x0, y, t = torch.randn(12, 1, 8, 8, generator=g), torch.randint(0, 4, (12,), generator=g), \
        torch.randint(0, 100, (12,), generator=g)
    torch.manual_seed(seed)
    loss, per_sample, _ = forward_backward(net, diffusion, weighting, x0, t, {"y": y}, k=k,
                                           autocast=contextlib.nullcontext, backward=lambda v: v.backward())
    return loss, per_sample, {n: p.grad for n, p in net.named_parameters() if p.requires_grad}, net


@pytest.mark.parametrize("strategy", [*STATIC, "stripes"])
@pytest.mark.parametrize("setting", [1, 3, "auto"])
@pytest.mark.parametrize("accum", [1, 2])
def test_bucketed_step_equals_the_masked_step(strategy, setting, accum):
    """Loss, per-sample losses and the gradient of every parameter within 1e-5 of the masked dense path."""
    model, diffusion, plan = _model(strategy=strategy)
    loss0, per0, grads0, _ = _step(model, diffusion, accum)
    assert enable_train_buckets(plan, setting) is None
    loss1, per1, grads1, net = _step(model, diffusion, accum)
    stats = net.routing.buckets.stats
    assert stats.forwards == accum and (setting == "auto" or set(stats.k_counts) == {setting})
    assert abs(loss1.item() - loss0.item()) <= 1e-5 * abs(loss0.item())
    torch.testing.assert_close(per1, per0, atol=1e-5, rtol=1e-5)
    assert grads0.keys() == grads1.keys()
    for name, g0 in grads0.items():
        assert (g0 is None) == (grads1[name] is None), name
        if g0 is not None:
            scale = max(g0.abs().max().item(), 1e-12)
            assert (grads1[name] - g0).abs().max().item() <= 1e-5 * scale, name


@pytest.mark.parametrize("site", ["heads", "mlp"])
def test_single_unit_sites_bucket_too(site):
    model, diffusion, plan = _model(site=site)
    loss0, _, grads0, _ = _step(model, diffusion, 1)
    enable_train_buckets(plan, 4)
    loss1, _, grads1, _ = _step(model, diffusion, 1)
    assert abs(loss1.item() - loss0.item()) <= 1e-5 * abs(loss0.item())
    for name, g0 in grads0.items():
        torch.testing.assert_close(grads1[name], g0, atol=1e-5 * max(g0.abs().max().item(), 1e-12), rtol=0)


def test_buckets_run_narrower_than_the_full_width_and_only_in_training():
    model, _, plan = _model()
    enable_train_buckets(plan, 4)
    t = torch.tensor([0, 99, 50, 1, 98, 51, 2, 97])
    model.train()
    buckets = model.train_buckets(t, torch.float32)
    assert buckets is not None and buckets.k == 4 and buckets.width < 0.9
    sorted_t = t[buckets.order]
    assert torch.equal(sorted_t[buckets.inverse], t)
    assert sorted_t.tolist() == sorted(t.tolist())  # DTR's window start grows with t: the key sorts by it
    route = buckets.routes[0]
    assert isinstance(route, BucketedUnits) and len(route.bounds) == 4
    assert all(u is not None and u.count < u.total for u in route.units)
    model.eval()
    assert model.train_buckets(t, torch.float32) is None  # sampling keeps its shared-timestep fast path


def test_dtr_keys_sort_by_window_start():
    table = SlidingWindow(alpha=4.0, beta=0.5).mask_table(1000, 24).numpy()
    starts = table.argmax(axis=1)
    order = np.argsort(timestep_keys([table]), kind="stable")
    assert np.all(np.diff(starts[order]) >= 0)


def test_split_bounds_and_auto_minimises_the_documented_cost():
    assert split_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert split_bounds(2, 5) == [(0, 1), (1, 2)]  # K capped at the batch
    rng = np.random.default_rng(0)
    rows = np.sort(rng.random((32, 20)), axis=0) > 0.5
    weights = np.full(20, 1 / 20)
    costs = {k: float(np.array([hi - lo for lo, hi in split_bounds(32, k)]) @ union_width(rows, split_bounds(32, k),
                                                                                          weights)) + 0.5 * k
             for k in range(1, 17)}
    assert choose_k(rows, weights) == min(costs, key=lambda k: (costs[k], k))
    assert choose_k(rows, weights, overhead=1e6) == 1


def test_learned_strategy_falls_back_with_one_line(capsys):
    cfg = config_from_dict(apply_overrides(parse_yaml(TINY), [
        "routing={name: switch, num_experts: 3, top_k: 2, freq_dim: 16}", "train.timestep_buckets=auto"]))
    model = build_model(cfg)
    applied = apply_train_buckets(model, cfg.train.timestep_buckets)
    assert applied["applied"] is False and "learned strategy" in applied["why"]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "train.timestep_buckets 'auto' not applied, the masked path runs" in out[0]
    assert model.plan is not None and model.plan.buckets is None


def test_compile_and_off_are_recorded():
    cfg = config_from_dict(apply_overrides(parse_yaml(TINY), ["train.timestep_buckets=2"]))
    model = build_model(cfg)
    assert apply_train_buckets(model, cfg.train.timestep_buckets) == {"setting": 2, "applied": True}
    off = config_from_dict(parse_yaml(TINY))
    assert apply_train_buckets(model, off.train.timestep_buckets) == {"setting": 0, "applied": False,
                                                                      "why": "not requested"}
    assert "train.compile" in apply_train_buckets(model, 2, compiled=True, verbose=False)["why"]


@pytest.mark.parametrize("overrides, expected", [
    (["routing.site=input"], "train.timestep_buckets: 2 with routing.site 'input' of backbone 'dit' (allowed: 0, "
                             "or routing.site one of heads, mlp, heads_mlp)"),
    (["backbone={name: adm_unet, preset: small, in_channels: 1, num_classes: 4, image_size: 8}",
      "routing.site=input"],
     "train.timestep_buckets: 2 with routing.site 'input' of backbone 'adm_unet' (allowed: 0: backbone "
     "'adm_unet' runs no routing site in buckets)"),
])
def test_validate_refuses_buckets_without_bucketed_execution(tmp_path, overrides, expected):
    cfg = config_from_dict(apply_overrides(parse_yaml(TINY), [*overrides, "train.timestep_buckets=2",
                                                              f"output_dir={tmp_path}"]))
    with pytest.raises(ConfigError) as err:
        validate_run(cfg)
    assert str(err.value) == expected


def test_bad_setting_is_one_config_line():
    with pytest.raises(ConfigError, match=r"train.timestep_buckets: must be 0 \(off\), a bucket count K >= 1, or "
                                          r"auto \(got 'many'\)"):
        config_from_dict(apply_overrides(parse_yaml(TINY), ["train.timestep_buckets=many"]))


def test_enable_refuses_the_input_site():
    model, _, _ = _model()
    plan = RoutingPlan(SlidingWindow(alpha=1.0, beta=0.5), model.routed_channels(), 100)
    with pytest.raises(ConfigError, match="train.timestep_buckets: 3 needs a unit routing site"):
        enable_train_buckets(plan, 3)


def test_buckets_under_activation_checkpointing_give_the_masked_gradients():
    model, diffusion, plan = _model()
    model.set_activation_checkpointing(True)
    loss0, _, grads0, _ = _step(model, diffusion, 1)
    enable_train_buckets(plan, 3)
    loss1, _, grads1, _ = _step(model, diffusion, 1)
    assert abs(loss1.item() - loss0.item()) <= 1e-5 * abs(loss0.item())
    for name, g0 in grads0.items():
        torch.testing.assert_close(grads1[name], g0, atol=1e-5 * max(g0.abs().max().item(), 1e-12), rtol=0)
