"""Gradient accumulation (training/accumulate.py), per-block activation checkpointing and TF32 (core/compute.py)."""
import contextlib
import copy

import pytest
import torch

from dtr_plugins.compose import build_diffusion, build_model
from dtr_plugins.core.compute import apply_activation_checkpointing, run_block, tf32_mode
from dtr_plugins.core.config import apply_overrides, config_from_dict, load_config, parse_yaml
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.core.timesteps import training_sampler
from dtr_plugins.training.accumulate import forward_backward, micro_slices, no_sync_of, weighted_share

from ..conftest import write

TINY = """\
name: tiny
seed: 3
backbone: {name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, in_channels: 1,
  num_classes: 4}
routing: {name: dtr, alpha: 4.0, beta: 0.8}
diffusion: {steps: 100, schedule: linear, learn_sigma: true}
data: {name: synthetic, num_samples: 64, image_size: 8, num_classes: 4}
eval: {at_end: false}
"""


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (0 when both are 0)."""
    scale = a.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def test_micro_slices_cover_the_batch_in_order():
    assert micro_slices(8, 4) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert micro_slices(5, 1) == [slice(0, 5)]
    with pytest.raises(ValueError, match="cannot split a batch of 6"):
        micro_slices(6, 4)


@pytest.mark.parametrize("name", default_registry().names("loss_weighting"))
def test_weighted_shares_sum_to_the_whole_batch_loss_with_its_gradients(name):
    """Every built-in weighting: the k shares give f(T) and the gradients of f(T), to the per-sample terms and to
    the weighting's own (learned) parameters; this is what makes accumulation exact."""
    diffusion = build_diffusion(config_from_dict(
        {"name": "w", "backbone": {"name": "dit", "size": "S/2", "input_size": 8, "in_channels": 1},
         "data": {"name": "synthetic"}, "eval": {"at_end": False}}))
    weighting = default_registry().build("loss_weighting", name, **({"k": 4} if name == "ant_uw" else {}))
    with torch.no_grad():
        for p in weighting.parameters():
            p.copy_(torch.linspace(-0.7, 0.9, p.numel()).view_as(p))  # learned weights away from their init
    torch.manual_seed(0)
    n, k = 16, 4
    t = training_sampler(diffusion, weighting).sample(n)
    mse, vb = torch.rand(n, requires_grad=True), torch.rand(n, requires_grad=True)

    def terms(part=slice(None)):
        return {"mse": mse[part], "vb": vb[part], "loss": mse[part] + vb[part]}

    whole = weighting(terms(), t, diffusion)
    grads = torch.autograd.grad(whole, [mse, vb, *weighting.parameters()])
    shares = [weighted_share(weighting, terms(part), t, part, diffusion, k) for part in micro_slices(n, k)]
    total = sum(shares)
    assert abs(total.item() - whole.item()) <= 1e-6 * abs(whole.item())
    for g_whole, g_acc in zip(grads, torch.autograd.grad(total, [mse, vb, *weighting.parameters()])):
        assert rel_err(g_whole, g_acc) < 1e-6


def _tiny(*overrides):
    cfg = config_from_dict(apply_overrides(parse_yaml(TINY), list(overrides)))
    torch.manual_seed(0)
    return cfg, build_model(cfg), build_diffusion(cfg)


@pytest.mark.parametrize("weighting", ["constant", "ant_uw"])
def test_forward_backward_in_micro_batches_gives_the_single_batch_gradients(weighting):
    cfg, model, diffusion = _tiny(f"loss_weighting={{name: {weighting}, k: 4}}" if weighting == "ant_uw" else
                                  "loss_weighting.name=constant")
    model.train()  # label dropout on: its uniform draws are sequential on CPU, so they match too
    with torch.no_grad():  # leave DiT's zero initialisation, so the labels reach the output and the gradients
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x0 = torch.randn(8, 1, 8, 8)
    y = torch.arange(8) % 4
    results = {}
    for k in (1, 2, 4):
        net, w = copy.deepcopy(model), default_registry().build("loss_weighting", cfg.loss_weighting.name,
                                                                **cfg.loss_weighting.params)
        torch.manual_seed(11)
        t = training_sampler(diffusion, w).sample(8)
        loss, per_sample, aux = forward_backward(net, diffusion, w, x0, t, {"y": y}, k=k,
                                                 autocast=contextlib.nullcontext, backward=lambda v: v.backward())
        grads = [p.grad.clone() for p in [*net.parameters(), *w.parameters()] if p.grad is not None]
        results[k] = (loss, per_sample, grads)
        assert aux == {} and per_sample.shape == (8,)
    loss1, per1, grads1 = results[1]
    for k in (2, 4):
        loss_k, per_k, grads_k = results[k]
        assert abs(loss_k.item() - loss1.item()) <= 1e-6 * abs(loss1.item())
        assert rel_err(per1, per_k) < 1e-6  # the same images, timesteps and noise per sample
        assert len(grads_k) == len(grads1)
        assert max(rel_err(a, b) for a, b in zip(grads1, grads_k)) < 1e-6


def test_ddp_syncs_only_on_the_last_micro_batch(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cfg, model, diffusion = _tiny()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert no_sync_of(ddp) == ddp.no_sync
        assert no_sync_of(torch.compile(ddp)) == ddp.no_sync  # found under torch.compile too (not compiled here)
        assert no_sync_of(model) is contextlib.nullcontext
        synced = []
        model.register_forward_hook(lambda *_: synced.append(ddp.require_backward_grad_sync))
        w = default_registry().build("loss_weighting", "constant")
        t = torch.randint(0, 100, (6,))
        forward_backward(ddp, diffusion, w, torch.randn(6, 1, 8, 8), t, {"y": torch.zeros(6, dtype=torch.long)},
                         k=3, autocast=contextlib.nullcontext, backward=lambda v: v.backward())
        assert synced == [False, False, True]
    finally:
        dist.destroy_process_group()


def test_auxiliary_losses_are_added_per_micro_batch_and_reported_as_their_mean():
    cfg, model, diffusion = _tiny()
    w = default_registry().build("loss_weighting", "constant")
    values = iter([torch.tensor(2.0), torch.tensor(4.0)])
    loss, _, aux = forward_backward(model, diffusion, w, torch.randn(4, 1, 8, 8), torch.randint(0, 100, (4,)),
                                    {"y": torch.zeros(4, dtype=torch.long)}, k=2, autocast=contextlib.nullcontext,
                                    backward=lambda v: v.backward(), aux_losses=lambda: {"balance": next(values)})
    assert aux["balance"].item() == 3.0


def test_learned_switch_routing_in_micro_batches_gives_the_single_batch_gradients_and_prior_loss():
    """``switch`` (learned routing with an auxiliary prior loss): k micro-batches give the single batch's prior
    loss and gradients, routers and experts included (each micro-batch's prior is a mean over its samples, so
    the k shares must be divided by k)."""
    cfg, model, diffusion = _tiny("routing={name: switch, num_experts: 3, top_k: 2, freq_dim: 16}")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # experts away from zero (gates not 1), routers away from their initialisation
        for name, p in model.named_parameters():
            if name.startswith("routing.learned.layers."):
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 if ".router." in name else 0.2))
    model.train()
    x0 = torch.randn(8, 1, 8, 8)
    y = torch.arange(8) % 4
    results = {}
    for k in (1, 2, 4):
        net, w = copy.deepcopy(model), default_registry().build("loss_weighting", "constant")
        torch.manual_seed(11)
        t = training_sampler(diffusion, w).sample(8)
        loss, _, aux = forward_backward(net, diffusion, w, x0, t, {"y": y}, k=k, autocast=contextlib.nullcontext,
                                        backward=lambda v: v.backward(), aux_losses=net.plan.pop_aux_losses)
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        results[k] = (loss, aux["switch_jsd"], grads)
    loss1, prior1, grads1 = results[1]
    assert prior1.item() > 1e-3
    router = [n for n in grads1 if n.startswith("routing.learned.")]
    assert {"routing.learned.layers.0.router.weight", "routing.learned.layers.1.expert_weight",
            "routing.learned.embed_in.weight"} <= set(router)
    for k in (2, 4):
        loss_k, prior_k, grads_k = results[k]
        assert abs(loss_k.item() - loss1.item()) <= 1e-6 * abs(loss1.item())
        assert abs(prior_k.item() - prior1.item()) <= 1e-6 * prior1.item()
        assert set(grads_k) == set(grads1)
        assert max(rel_err(grads1[n], grads_k[n]) for n in router) < 1e-6, k
        assert max(rel_err(grads1[n], grads_k[n]) for n in grads1) < 1e-6, k


# ------------------------------------------------------------------------------ activation checkpointing
def _grads(model, x, t, y):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same dropout draws with and without recomputation
    out = model(x, t, y)
    (out.square().mean()).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone", [
    "{name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, in_channels: 1,"
    " num_classes: 4}",
    "{name: adm_unet, preset: small, image_size: 8, in_channels: 1, num_classes: 4, dropout: 0.3}",
])
def test_activation_checkpointing_gives_the_same_output_and_gradients(backbone):
    cfg, model, _ = _tiny(f"backbone={backbone}")
    model.train()
    with torch.no_grad():  # leave DiT's zero initialisation, so gradients reach every block
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([3, 40, 77, 99]), torch.tensor([0, 1, 2, 3])
    out_plain, plain = _grads(model, x, t, y)
    assert apply_activation_checkpointing(model, False, cfg.backbone.name) == {"applied": False,
                                                                               "why": "not requested"}
    assert apply_activation_checkpointing(model, True, cfg.backbone.name) == {"applied": True}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        out_ckpt, ckpt = _grads(model, x, t, y)
    assert torch.equal(out_plain, out_ckpt)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    assert max(rel_err(plain[n], ckpt[n]) for n in plain) < 1e-6
    # fewer activations kept for the backward pass than without checkpointing
    apply_activation_checkpointing(model, False, cfg.backbone.name)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: kept.append(x.numel()) or x, lambda x: x):
        _grads(model, x, t, y)
    assert sum(saved) < sum(kept)


def test_checkpointing_is_a_plain_call_without_gradients_and_refused_backbones_are_recorded():
    calls = []
    block = lambda x: calls.append(torch.is_grad_enabled()) or x * 2  # noqa: E731
    with torch.no_grad():
        assert torch.equal(run_block(block, True, torch.ones(2)), torch.full((2,), 2.0))
    assert calls == [False]
    assert apply_activation_checkpointing(torch.nn.Linear(2, 2), True, "mlp") == {
        "applied": False, "why": "backbone 'mlp' has no per-block activation checkpointing"}
    assert apply_activation_checkpointing(torch.nn.Linear(2, 2), False, "mlp") == {"applied": False,
                                                                                 "why": "not requested"}


# ------------------------------------------------------------------------------------------------ TF32
def test_tf32_is_not_applicable_on_cpu_and_touches_nothing():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32_mode(True, torch.device("cpu")) as record:
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert record["applied"] is False and "not applicable" in record["why"] and "requested" in record["why"]
    with tf32_mode(False, torch.device("cpu")) as record:
        pass
    assert record["applied"] is False


def test_tf32_on_cuda_devices_by_compute_capability(monkeypatch):
    """The CUDA branch without a GPU: capability and name come from torch.cuda, asked about the given device."""
    from dtr_plugins.core.compute import _tf32_support

    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: asked.append(d) or (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: asked.append(d) or "Tesla T4")
    device = torch.device("cuda", 1)
    assert _tf32_support(device) == "Tesla T4 (compute capability 7.5) has no TF32 (needs 8.0)"
    assert asked == [device, device]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: (8, 0))
    assert _tf32_support(device) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: (9, 0))
    assert _tf32_support(device) is None
    assert _tf32_support(torch.device("cpu")) == "device cpu: TF32 is a CUDA (Ampere or newer) mode, not applicable"


def test_config_keys_and_bad_values(tmp_path, run_cli):
    cfg = load_config(write(tmp_path / "c.yaml", TINY), overrides=["train.batch_size=8", "train.grad_accum_steps=4",
                                                                      "train.tf32=true",
                                                                      "train.activation_checkpointing=true"])
    assert (cfg.train.grad_accum_steps, cfg.train.tf32, cfg.train.activation_checkpointing) == (4, True, True)
    assert load_config(write(tmp_path / "d.yaml", TINY)).train.grad_accum_steps == 1
    path = write(tmp_path / "e.yaml", TINY)
    for override, expected in [
        ("train.grad_accum_steps=0", "train.grad_accum_steps: Input should be greater than or equal to 1"),
        ("train.grad_accum_steps=3", "train.grad_accum_steps: 3 does not divide train.batch_size 64"),
        ("train.tf32=maybe", "train.tf32: expected a boolean, got 'maybe'"),
        ("train.activation_checkpointing=2", "train.activation_checkpointing: expected a boolean, got 2"),
    ]:
        code, out, err = run_cli("validate", str(path), "--set", override)
        assert code == 2 and expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
