"""load_checkpoint / save_checkpoint: formats, prefixes, and one-line errors."""
from __future__ import annotations

import argparse
import fractions
import warnings

import pytest
import torch

from dtr_plugins.backbones.dit import DiT
from dtr_plugins.core.checkpoint import FORMAT, RoutingMismatchWarning, load_checkpoint, save_checkpoint
from dtr_plugins.core.errors import CheckpointError
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.strategies.dtr import SlidingWindow

from ..conftest import FIXTURES

SMALL = dict(input_size=4, patch_size=2, in_channels=1, hidden_size=16, depth=2, num_heads=2, num_classes=3)


def small(seed: int) -> DiT:
    torch.manual_seed(seed)
    model = DiT(**SMALL)
    with torch.no_grad():  # break the zero init so that a load is visible
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    return model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_own_format(tmp_path):
    model, ema = small(0), small(1)
    path = save_checkpoint(tmp_path / "ckpt" / "0000010.pt", model=model.state_dict(), ema=ema.state_dict(),
                           step=10, config={"name": "x"}, optimizer={"state": {}, "param_groups": []},
                           rng={"torch": torch.get_rng_state()})
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["0000010.pt"]  # no temp file left
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["step"] == 10

    target = small(2)
    meta = load_checkpoint(target, path)
    assert same_weights(target, ema)
    assert meta["step"] == 10 and meta["config"] == {"name": "x"} and "optimizer" in meta
    load_checkpoint(target, path, use_ema=False)
    assert same_weights(target, model)


def test_own_format_without_ema_loads_model(tmp_path):
    model = small(0)
    path = save_checkpoint(tmp_path / "c.pt", model=model.state_dict(), step=1)
    target = small(1)
    load_checkpoint(target, path)
    assert same_weights(target, model)


def test_save_checkpoint_refuses_format_field(tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "c.pt", format="other")


def test_bare_state_dict_with_ddp_prefix(tmp_path):
    model = small(0)
    path = tmp_path / "bare.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    target = small(1)
    meta = load_checkpoint(target, path)
    assert same_weights(target, model) and set(meta) == {"model"}


def test_official_dtr_training_checkpoint(tmp_path):
    """{"model", "ema", "opt", "args": Namespace} with _unit_mapping buffers and DDP prefixes."""
    fixture = torch.load(FIXTURES / "dtr_dit_tiny_official.pt", weights_only=True)
    state = fixture["state_dict"]
    path = tmp_path / "0400000.pt"
    torch.save({"model": {f"module.{k}": v * 0 for k, v in state.items()}, "ema": state,
                "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                "args": argparse.Namespace(model="DiT-XL/2", sharing_ratio=0.8)}, path)
    cfg = {k: fixture["config"][k] for k in ("input_size", "patch_size", "in_channels", "hidden_size", "depth",
                                             "num_heads", "num_classes")}
    model = DiT(**cfg).eval()
    model.attach_routing(RoutingPlan(SlidingWindow(alpha=4.0, beta=0.8), model.routed_channels(), 1000))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RoutingMismatchWarning)
        meta = load_checkpoint(model, path)
    assert meta["args"].sharing_ratio == 0.8
    with torch.no_grad():
        torch.testing.assert_close(model(fixture["x"], fixture["t"], fixture["y"]), fixture["out"], atol=1e-4, rtol=0)

    other = DiT(**cfg)
    other.attach_routing(RoutingPlan(SlidingWindow(alpha=1.0, beta=0.5), other.routed_channels(), 1000))
    plan = r"differ from the model's routing plan \(dtr\(alpha=1, beta=0.5\)\)"
    with pytest.warns(RoutingMismatchWarning, match=plan):
        load_checkpoint(other, path, use_ema=False)
    assert not other.blocks[0].attn.qkv.weight.any()  # use_ema=False took "model"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint file not found"):
        load_checkpoint(small(0), tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"this is not a checkpoint", bytes(range(256)) * 4, b""])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.pt: corrupt or not a PyTorch checkpoint") as info:
        load_checkpoint(small(0), path)
    assert "\n" not in str(info.value)


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "full.pt", model=small(0).state_dict())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.pt: corrupt or not a PyTorch checkpoint"):
        load_checkpoint(small(0), cut)


def test_unexpected_and_missing_keys(tmp_path):
    state = small(0).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["final_layer.linear.bias"]
    path = tmp_path / "keys.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys: final_layer\.linear\.bias; "
                                              r"1 unexpected keys: extra\.weight") as info:
        load_checkpoint(small(1), path)
    assert "\n" not in str(info.value)
    target = small(1)
    load_checkpoint(target, path, strict=False)
    assert torch.equal(target.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_many_unexpected_keys_are_summarised(tmp_path):
    state = small(0).state_dict()
    state.update({f"extra.{i}": torch.zeros(1) for i in range(9)})
    path = tmp_path / "keys.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"9 unexpected keys: extra\.0, extra\.1, extra\.2, extra\.3, "
                                              r"extra\.4 \(\+4 more\)"):
        load_checkpoint(small(1), path)


def test_shape_mismatch(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(DiT(**{**SMALL, "num_classes": 5}).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"y_embedder\.embedding_table\.weight \(6, 16\) in the file vs "
                                              r"\(4, 16\) in the model"):
        load_checkpoint(small(0), path, strict=False)


def test_no_weights_in_file(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"step": 3, "config": {}}, path)
    with pytest.raises(CheckpointError, match=r"no model weights found .*top-level keys: step, config"):
        load_checkpoint(small(0), path)


def test_unknown_format_version(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "dtr-plugins/9", "model": small(0).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint format 'dtr-plugins/9'"):
        load_checkpoint(small(0), path)


def test_unsafe_file_needs_opt_in(tmp_path):
    model = small(0)
    path = tmp_path / "unsafe.pt"
    torch.save({"model": model.state_dict(), "note": fractions.Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small(1), path)
    message = str(info.value)
    assert "\n" not in message and "unsafe.pt" in message and "fractions.Fraction" in message
    assert "--allow-unsafe-load" in message and "allow_unsafe=True" in message
    target = small(1)
    meta = load_checkpoint(target, path, allow_unsafe=True)
    assert same_weights(target, model) and meta["note"] == fractions.Fraction(1, 3)
