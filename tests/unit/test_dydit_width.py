"""``dydit_width`` (DyDiT's timestep-wise dynamic width) in the plan and in DiT: registration, refusals, the
always-on first unit, the FLOPs-target loss of a training forward and its schedule, task tables, the sliced
path at a shared timestep, flow matching's float tasks and fine-tuning from a dense file (``train.init_from``).
The official code's numbers are checked in tests/parity/test_dydit_width_official.py."""
from __future__ import annotations

import types
import warnings

import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.backbones.dit import DiT
from dtr_plugins.core.checkpoint import RouterInitWarning
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.core.routing import ActiveUnits, RoutingPlan
from dtr_plugins.strategies.dydit_width import (
    AUX_LOSS,
    DyDiTWidth,
    block_costs,
    target_at,
    width_loss,
    width_ratio,
)

from ..conftest import tiny_dit_config

TINY = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=4)
T = 100


def routed_dit(seed: int = 0, bias: float | None = None, **params) -> DiT:
    """A tiny DiT with dydit_width at heads_mlp, every weight random (routers too: decisions both ways);
    ``bias``: every router bias set to it afterwards."""
    torch.manual_seed(seed)
    model = DiT(**TINY)
    strategy = DyDiTWidth(**{"warmup_steps": 0, "full_width_steps": 0, **params})
    model.attach_routing(RoutingPlan(strategy, model.routed_channels("heads_mlp"), T, site="heads_mlp",
                                     cond_dim=model.routing_cond_dim()))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if "routers" in name else 0.2))
                if bias is not None and "routers" in name and name.endswith("bias"):
                    p.fill_(bias)
    return model


def strategy_of(model: DiT) -> DyDiTWidth:
    assert model.plan is not None and isinstance(model.plan.learned, DyDiTWidth)
    return model.plan.learned


def test_registered_through_its_entry_point():
    registry = build_registry()
    info = registry.get("strategy", "dydit_width")
    assert info.distribution == "dtr-plugins"
    assert isinstance(registry.build("strategy", "dydit_width", target=0.7), DyDiTWidth)


def test_refuses_other_sites_and_unsplittable_mlp_groups():
    site = r"routing.site: 'input' is not supported by dydit_width, .*\(allowed: heads_mlp\)"
    with pytest.raises(ConfigError, match=site):
        RoutingPlan(DyDiTWidth(), [32, 32], T, site="input", cond_dim=32)
    with pytest.raises(ConfigError, match="routing.mlp_groups: dydit needs the MLP units to split"):
        DyDiTWidth().bind([3, 8], T, site="heads_mlp", cond_dim=16)
    DyDiTWidth(mlp_groups="units").bind([3, 8], T, site="heads_mlp", cond_dim=16)  # one decision per unit
    with pytest.raises(ConfigError, match="dydit_width.target"):
        DyDiTWidth(target=0.0)


def test_dense_at_initialisation_and_the_first_unit_always_on():
    model = DiT(**TINY)
    model.attach_routing(RoutingPlan(DyDiTWidth(), model.routed_channels("heads_mlp"), T, site="heads_mlp",
                                     cond_dim=32))
    assert all(bool(t.all()) for t in strategy_of(model).task_tables(T))  # bias 15: every unit runs
    off = routed_dit(bias=-50.0)  # routers that want everything off
    tables = strategy_of(off).task_tables(T)
    assert [tuple(t.shape) for t in tables] == [(T, 4), (T, 16)] * 2
    for layer, table in enumerate(tables):
        first = 1 if layer % 2 == 0 else 4  # the first head; the first DyDiT group = mlp_ratio units
        assert bool((table[:, :first] == 1).all()) and bool((table[:, first:] == 0).all())
    units = strategy_of(routed_dit(bias=-50.0, mlp_groups="units")).task_tables(T)
    assert bool((units[1][:, 0] == 1).all()) and bool((units[1][:, 1:] == 0).all())


def test_dydit_groups_are_mlp_ratio_consecutive_units():
    for table in strategy_of(routed_dit()).task_tables(T)[1::2]:
        groups = table.view(T, 4, 4)
        assert bool((groups == groups[:, :, :1]).all())
        assert 0 < float(table.mean()) < 1


def test_target_schedule_is_upstreams():
    assert [target_at(s, 0.5, 1000, 100) for s in (0, 99, 100, 500, 1000, 1001)] == \
        [1.0, 1.0, 0.95, 0.75, 0.5, 0.5]
    assert target_at(0, 0.7, 0, 0) == 0.7


def test_training_forward_adds_the_flops_loss_of_its_gates_and_trains_the_routers():
    model = routed_dit(target=0.4, loss_weight=3.0).train()
    strategy = strategy_of(model)
    seen: dict[int, torch.Tensor] = {}
    decisions = strategy.decisions
    strategy.decisions = lambda layer, e, noise: seen.setdefault(layer, decisions(layer, e, noise))  # type: ignore
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([3, 40, 99]), torch.tensor([0, 1, 2])
    out = model(x, t, y)
    losses = model.plan.pop_aux_losses()
    assert list(losses) == [AUX_LOSS] and model.plan.pop_aux_losses() == {}
    heads = torch.stack([seen[0], seen[2]], 1)
    mlp = torch.stack([seen[1], seen[3]], 1)
    attn_cost, mlp_cost = block_costs(16, 32, 128)  # 16 tokens of width 32, MLP 4 x 32
    expected = width_loss(width_ratio(heads, mlp, attn_cost, mlp_cost), 0.4, 3.0)
    torch.testing.assert_close(losses[AUX_LOSS], expected)
    assert int(strategy.forwards) == 1
    (out.square().mean() + losses[AUX_LOSS]).backward()
    for router in (*strategy.head_routers, *strategy.mlp_routers, strategy.embed_in):
        assert router.weight.grad is not None and float(router.weight.grad.abs().sum()) > 0
    with torch.no_grad():
        model(x, t, y)
    assert model.plan.pop_aux_losses() == {}  # no gradients: nothing scored


def test_tables_equal_the_gates_and_the_sliced_path_equals_the_masked_one():
    model = routed_dit().eval()
    plan = model.plan
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 3])
    tables = strategy_of(model).task_tables(T)
    with torch.no_grad():
        t = torch.tensor([17, 80])
        h = torch.randn(2, 16, 32)
        for layer, table in enumerate(tables):
            assert torch.equal(plan.layer_gate(layer, h, t, None), table[t])
        shared = torch.tensor([17, 17])
        dense = model(x, shared, y)  # the module's gates, masked dense
        assert plan.export_tables()
        units = plan.learned_active_units(shared)
        assert units is not None and any(isinstance(u, ActiveUnits) and u.count < u.total for u in units)
        assert plan.learned_active_units(t) is None  # mixed timesteps: masked dense from the tables
        torch.testing.assert_close(model(x, shared, y), dense, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x, t, y)[1], model(x[1:], t[1:], y[1:])[0], atol=1e-5, rtol=1e-5)


def test_float_tasks_route_at_their_timestep():
    model = routed_dit().eval()
    tables = strategy_of(model).task_tables(T)
    k = torch.arange(0, T, 7)
    u = k.double() / (T - 1)
    h = torch.randn(len(k), 16, 32)
    with torch.no_grad():
        for layer, table in enumerate(tables):
            assert torch.equal(strategy_of(model).layer_gate(layer, h, u.float(), None), table[k])


def test_a_dense_file_initialises_a_fresh_run_and_init_from_is_validated(tmp_path, run_cli):
    path = tiny_dit_config(tmp_path, routing={"name": "dydit_width", "warmup_steps": 2}, eval={"heldout_every": 0})
    dense = DiT(**{**TINY, "num_classes": 4})
    ema = {k: torch.randn_like(v) for k, v in dense.state_dict().items()}
    torch.save({"model": dense.state_dict(), "ema": ema}, tmp_path / "dense.pt")
    from dtr_plugins.core.checkpoint import load_init_from
    from dtr_plugins.training.train import _initial_state, compose_checked

    cfg = dp.load_config(path, overrides=["routing.site=heads_mlp", f"train.init_from={tmp_path / 'dense.pt'}"])
    parts = compose_checked(cfg)
    with warnings.catch_warnings(record=True) as caught:  # as dtr train: the file loaded, then the state built
        warnings.simplefilter("always")
        load_init_from(parts.model, cfg.train.init_from)
        state = _initial_state(cfg, parts, types.SimpleNamespace(device=torch.device("cpu")), None, False)
    assert any(issubclass(w.category, RouterInitWarning) for w in caught)
    own = state.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ema.items())  # the file's EMA weights
    assert torch.equal(own["routing.learned.embed_in.weight"], ema["t_embedder.mlp.0.weight"])
    assert all(torch.equal(v, state.ema.state_dict()[k]) for k, v in own.items())
    code, _, err = run_cli("validate", str(path), "--set", "routing.site=heads_mlp", "--set",
                           f"train.init_from={tmp_path / 'missing.pt'}", "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"train.init_from: {tmp_path / 'missing.pt'} does not exist" in err
