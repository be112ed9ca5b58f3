"""The ``token_router`` kind and ``tread`` (TREAD token routing in training): registration, the draw, the routed
forward (training only), config errors through ``dtr validate`` / ``dtr train``, bit-exact resume under both
processes with and without DTR, the records, ``dtr masks`` and export."""
from __future__ import annotations

import json

import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.compose import compose
from dtr_plugins.core.contracts import SupportsTokenRouting, TokenRouter, missing_members
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.core.token_routing import keep_ratios

from ..conftest import registry_with, tiny_dit_config

TREAD = {"name": "tread", "ratio": 0.5, "start": 1, "end": 2}


def tread(**params):
    return default_registry().build("token_router", "tread", **{"start": 1, "end": 2, **params})


def test_tread_is_registered_like_a_plugin_and_satisfies_the_contract():
    registry = default_registry()
    assert registry.names("token_router") == ["tread"]
    info = registry.get("token_router", "tread")
    assert info.distribution == "dtr-plugins" and missing_members(tread(), TokenRouter) == []


class FirstTokens:
    """A third-party token router written from the TokenRouter Protocol alone: the first ``keep`` tokens run
    blocks 0..0."""

    def __init__(self, keep: int = 3):
        self.start, self.end, self.keep = 0, 0, keep

    def keep_count(self, tokens: int) -> int:
        return self.keep

    def select(self, n: int, tokens: int, device=None) -> torch.Tensor:
        return torch.arange(self.keep, device=device).expand(n, -1)

    def applied(self) -> dict:
        return {"name": "first_tokens", "keep": self.keep}


def test_a_third_party_token_router_is_composed_like_a_builtin(tmp_path):
    from pydantic import BaseModel

    class Params(BaseModel):
        keep: int = 3

    registry = registry_with("token_router", "first_tokens", FirstTokens, params=Params)
    path = tiny_dit_config(tmp_path, token_routing={"name": "first_tokens", "keep": 5})
    model = compose(dp.load_config(path, registry=registry), registry, data=False).model
    seen: list[int] = []
    model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    model.train()(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert seen == [5] and model.token_router.applied() == {"name": "first_tokens", "keep": 5}


@pytest.mark.parametrize(("ratio", "tokens", "keep"), [(0.5, 16, 8), (0.25, 16, 12), (0.3, 10, 7), (0.99, 16, 1)])
def test_selection_keeps_the_official_count_of_distinct_tokens_per_sample(ratio, tokens, keep):
    router = tread(ratio=ratio)
    assert router.keep_count(tokens) == keep  # tokens - floor(tokens * ratio)
    torch.manual_seed(0)
    ids = router.select(5, tokens)
    assert ids.shape == (5, keep) and ids.dtype == torch.int64
    assert all(len(set(row.tolist())) == keep and min(row) >= 0 and max(row) < tokens for row in ids)
    assert keep_ratios(router, 4, tokens) == [1.0, keep / tokens, keep / tokens, 1.0]


def test_selection_is_a_function_of_the_generator_state_and_uniform():
    router = tread(ratio=0.75)
    torch.manual_seed(3)
    a = router.select(4, 16)
    torch.manual_seed(3)
    assert torch.equal(a, router.select(4, 16))
    assert len({tuple(sorted(r.tolist())) for r in a}) > 1  # each sample its own subset
    torch.manual_seed(4)
    counts = torch.bincount(router.select(4000, 16).flatten(), minlength=16).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.1  # every token kept 1/4 of the time


def test_only_training_forwards_route_and_the_span_sees_the_kept_tokens(tmp_path):
    path = tiny_dit_config(tmp_path, backbone={"depth": 4}, token_routing=TREAD)
    model = compose(dp.load_config(path), data=False).model
    assert isinstance(model, SupportsTokenRouting) and model.token_layout() == (4, 16)
    torch.manual_seed(0)
    with torch.no_grad():  # adaLN and the output layer start at zero: random weights, so every block acts
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3) if p.requires_grad else None
    seen: list[int] = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1])) for b in model.blocks]
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 50, 99]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        full = model.eval()(x, t, y)
        assert seen == [16, 16, 16, 16]
        seen.clear()
        model.token_router = None  # the plain model in training mode (no label dropout at 0): the same output
        model.y_embedder.dropout_prob = 0.0
        torch.testing.assert_close(model.train()(x, t, y), full, atol=1e-6, rtol=0)
        seen.clear()
        model.attach_token_routing(tread())
        routed = model(x, t, y)
    assert seen == [16, 8, 8, 16]
    assert (routed - full).abs().max() > 1e-4
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize(("change", "key"), [({"ratio": 1.0}, "token_routing.ratio"),
                                             ({"ratio": 0.0}, "token_routing.ratio"),
                                             ({"start": 2, "end": 1}, "token_routing.end"),
                                             ({"end": 4}, "token_routing.end"),
                                             ({"start": -1}, "token_routing.start")])
def test_bad_ratio_or_span_is_one_line_naming_file_and_key(tmp_path, run_cli, change, key):
    path = tiny_dit_config(tmp_path, backbone={"depth": 4}, token_routing={**TREAD, **change})
    for command in (["validate", str(path)], ["train", str(path), "--set", f"output_dir={tmp_path / 'runs'}"]):
        code, _, err = run_cli(*command)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert str(path) in err and key in err, err
    assert not (tmp_path / "runs").exists()


def test_unknown_token_router_is_refused(tmp_path, run_cli):
    path = tiny_dit_config(tmp_path, token_routing={"name": "mod", "start": 0, "end": 1})
    code, _, err = run_cli("validate", str(path))
    assert code == 2 and "token_routing.name" in err and "tread" in err


@pytest.mark.parametrize(("process", "routing"), [({"name": "gaussian", "steps": 100}, {"name": "dtr"}),
                                                  ({"name": "flow_matching"}, {"name": "vanilla"})])
def test_trains_resumes_bit_exactly_and_records_token_routing(tmp_path, process, routing):
    def run(folder, *overrides, resume=False):
        path = tiny_dit_config(tmp_path / folder, backbone={"depth": 4}, token_routing=TREAD, diffusion=process,
                               routing=routing, sample=None, train={"steps": 4, "ckpt_every": 2, "log_every": 2})
        cfg = dp.load_config(path, overrides=[f"output_dir={tmp_path / folder / 'runs'}", *overrides])
        return dp.train(cfg, resume=resume, progress=False)

    straight = run("a")
    run("b", "train.steps=2")
    resumed = run("b", resume=True)
    a, b = (torch.load(d / "checkpoints" / "0000004.pt", weights_only=True)["model"] for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((resumed / "meta.json").read_text())
    assert meta["token_routing"] == {**TREAD, "applied": True, "training_only": True, "blocks": 4, "tokens": 16,
                                     "keep_ratio": [1.0, 0.5, 0.5, 1.0]}
    assert "token_routing:" in (resumed / "config.yaml").read_text()


def test_masks_prints_the_keep_ratio_per_block(tmp_path, run_cli, log_text):
    path = tiny_dit_config(tmp_path, backbone={"depth": 4}, token_routing=TREAD)
    code, _, err = run_cli("masks", str(path), "--out", str(tmp_path / "masks.png"))
    assert code == 0, err
    assert "keep ratio per block 1.00 0.50 0.50 1.00" in log_text()


def test_export_leaves_token_routing_out_of_the_model(tmp_path, run_cli):
    path = tiny_dit_config(tmp_path, backbone={"depth": 4}, token_routing=TREAD, sample=None,
                           train={"steps": 1, "ckpt_every": 1})
    run_dir = dp.train(dp.load_config(path, overrides=[f"output_dir={tmp_path / 'runs'}"]), progress=False)
    code, _, err = run_cli("export", str(run_dir), "--out", str(tmp_path / "export"))
    assert code == 0, err
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert "token_routing" not in config
    assert next(v for k, v in config.items() if isinstance(v, dict) and "trained_with_token_routing" in v)[
        "trained_with_token_routing"] == TREAD
    loaded = dp.from_pretrained(tmp_path / "export")
    assert loaded.model.token_router is None and loaded.cfg.token_routing is None
