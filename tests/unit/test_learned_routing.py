"""Routing contract v2: learned strategies in the plan and in DiT (gates, gradients, tables, refusals)."""
from __future__ import annotations

import pytest
import torch

from dtr_plugins.backbones.dit import DiT
from dtr_plugins.core.contracts import LearnedRoutingStrategy, RoutingStrategy
from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.routing import RoutedBackbone, RoutingPlan, gate_like, routed_residual
from dtr_plugins.strategies.dtr import SlidingWindow
from dtr_plugins.strategies.vanilla import Vanilla

from ..conftest import registry_with
from ..learned_strategies import TaskGate, TokenGate

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)
T = 50


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # DiT's zero init of adaLN would hide every routing effect
        for name, p in model.named_parameters():
            if not name.startswith("routing."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def learned_dit(strategy, seed: int = 0) -> DiT:
    model = DiT(**TINY)
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(), T, cond_dim=model.routing_cond_dim()))
    return randomized(model, seed)


def test_the_two_kinds_are_told_apart_by_protocol():
    assert isinstance(TaskGate(), LearnedRoutingStrategy) and not isinstance(TaskGate(), RoutingStrategy)
    for static in (Vanilla(), SlidingWindow()):
        assert isinstance(static, RoutingStrategy) and not isinstance(static, LearnedRoutingStrategy)


def test_static_plans_are_unchanged():
    plan = RoutingPlan(SlidingWindow(), [16, 16], num_tasks=T)
    assert not plan.is_learned and plan.learned is None and plan.state_dict() == {}
    assert plan.param_groups() == [] and plan.pop_aux_losses() == {}
    assert RoutingPlan(Vanilla(), [8], num_tasks=T).is_dense


def test_learned_plan_binds_and_owns_the_parameters():
    model = learned_dit(TaskGate())
    plan = model.plan
    assert plan.is_learned and not plan.is_dense
    keys = [k for k in model.state_dict() if k.startswith("routing.")]
    assert keys == ["routing.learned.logits.0", "routing.learned.logits.1"]
    assert model.state_dict()["routing.learned.logits.0"].shape == (T, TINY["hidden_size"])
    with pytest.raises(ValueError, match="layer_gate"):
        plan.gather(torch.tensor([0]), torch.float32)


def test_gate_is_applied_as_the_routed_residual():
    model = learned_dit(TaskGate()).eval()
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 17, 49]), torch.tensor([1, 2, 3])
    out = model(x, t, y)
    # by hand: every block x + F(g * x), g = sigmoid(logits[t]) as [N, 1, C]
    h = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y, False)
    for layer, block in enumerate(model.blocks):
        g = torch.sigmoid(model.plan.learned.logits[layer][t])[:, None, :]
        plain = lambda u, b=block: b(u, c) - u  # noqa: E731 -- F(u) = block(u) - u
        h = routed_residual(h, g, plain)
    ref = model.unpatchify(model.final_layer(h, c))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_router_parameters_get_gradients_and_aux_losses():
    model = learned_dit(TaskGate(weight=0.5)).train()
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([3, 4]), torch.tensor([0, 1]))
    aux = model.plan.pop_aux_losses()
    assert set(aux) == {"sparsity"} and aux["sparsity"].requires_grad
    (out.square().mean() + aux["sparsity"]).backward()
    grads = [p.grad for p in model.plan.learned.parameters()]
    assert all(g is not None and bool(g[3:5].abs().sum() > 0) and bool(g[5:].abs().sum() == 0) for g in grads)
    assert model.plan.pop_aux_losses() == {}  # popped
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.tensor([0]))
    assert model.plan.pop_aux_losses() == {}  # nothing collected outside training


def test_exported_tables_give_the_module_output():
    model = learned_dit(TaskGate()).eval()
    x, t, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 9, 9, 49]), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        ref = model(x, t, y)
        assert model.plan.export_tables()
        assert torch.equal(model(x, t, y), ref)
    model.plan.clear_exported()
    token = learned_dit(TokenGate())
    assert not token.plan.export_tables()  # gates depend on the tokens: the module keeps running


def test_token_gates_per_sample_and_token():
    model = learned_dit(TokenGate()).eval()
    h = torch.randn(2, 16, 32)
    g = model.plan.layer_gate(0, h, torch.tensor([1, 2]), None)
    assert g.shape == (2, 16, 32)
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert out.shape == (2, 8, 8, 8) and bool(torch.isfinite(out).all())


def test_gate_like_layouts():
    rows = torch.rand(2, 5)
    assert gate_like(rows, torch.zeros(2, 7, 5)).shape == (2, 1, 5)
    assert gate_like(rows, torch.zeros(2, 5, 3, 3)).shape == (2, 5, 1, 1)


def test_learned_strategy_refuses_other_sites_and_non_modules():
    class HeadsBackbone(RoutedBackbone):  # declares a heads site, but learned gates only at its inputs
        routing_sites = ("input", "heads")
        learned_gates = True

        def routed_channels(self, site="input"):
            return [4, 4]

    with pytest.raises(ConfigError, match="routing.site: 'heads' is not supported by learned strategy .* "
                                          r"on backbone HeadsBackbone \(allowed: input\)"):
        HeadsBackbone().attach_routing(RoutingPlan(TaskGate(), [4, 4], T, site="heads"))

    class NotAModule:
        learned_routing = True

        def bind(self, layer_units, num_tasks, *, site, cond_dim): ...
        def layer_gate(self, layer, x, tasks, cond): ...
        def pop_aux_losses(self): ...
        def param_groups(self): ...
        def task_tables(self, num_tasks): ...

    with pytest.raises(PluginError, match="must be a torch.nn.Module"):
        RoutingPlan(NotAModule(), [4], T)


def test_param_groups_must_cover_the_strategy_parameters():
    class Partial(TaskGate):
        def param_groups(self):
            return [{"params": [self.logits[0]]}]

    plan = RoutingPlan(Partial(), [4, 4], T)
    with pytest.raises(PluginError, match="exactly once"):
        plan.param_groups()


def test_official_weights_load_into_a_learned_model_and_the_router_keys_are_reported(tmp_path):
    from dtr_plugins.core.checkpoint import RouterInitWarning, load_checkpoint, routing_record

    official = randomized(DiT(**TINY), seed=5)  # the official key layout: no routing keys at all
    torch.save(official.state_dict(), tmp_path / "official.pt")
    model = learned_dit(TaskGate(), seed=1)
    router = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("routing.")}
    with pytest.warns(RouterInitWarning, match="2 keys keep their initialisation: routing.learned.logits.0"):
        meta = load_checkpoint(model, tmp_path / "official.pt")
    assert meta["initialised_keys"] == ["routing.learned.logits.0", "routing.learned.logits.1"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in router.items())  # the router keeps its init
    assert all(torch.equal(state[k], v) for k, v in official.state_dict().items())  # the backbone is loaded
    # the routing record tells a learned model from a vanilla one (same dense hash otherwise)
    plain = DiT(**TINY)
    plain.attach_routing(RoutingPlan(Vanilla(), plain.routed_channels(), T))
    assert routing_record(plain)["masks_sha256"] != routing_record(model)["masks_sha256"]


def test_learned_checkpoints_stay_strict(tmp_path):
    from dtr_plugins.core.checkpoint import load_checkpoint
    from dtr_plugins.core.errors import CheckpointError

    state = learned_dit(TaskGate()).state_dict()
    partial = {k: v for k, v in state.items() if k != "routing.learned.logits.1"}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="1 missing keys: routing.learned.logits.1"):
        load_checkpoint(learned_dit(TaskGate()), tmp_path / "partial.pt")
    torch.save(state, tmp_path / "learned.pt")
    with pytest.raises(CheckpointError, match="unexpected keys: routing.learned.logits.0"):
        load_checkpoint(DiT(**TINY), tmp_path / "learned.pt")


def test_optimizer_groups_static_and_learned():
    from dtr_plugins.core.config import config_from_dict
    from dtr_plugins.training.trainer import TrainState
    from dtr_plugins.weighting.constant import Constant

    cfg = config_from_dict({"name": "x", "backbone": {"name": "dit", **TINY}, "routing": {"name": "dtr"},
                            "data": {"name": "synthetic", "image_size": 8, "num_classes": 10},
                            "train": {"lr": 1e-3, "weight_decay": 0.01}})
    for strategy in (SlidingWindow(), Vanilla()):  # static: one group, every backbone parameter in model order
        model = DiT(**TINY)
        model.attach_routing(RoutingPlan(strategy, model.routed_channels(), T))
        groups = TrainState.create(model, Constant(), cfg, torch.device("cpu")).optimizer.param_groups
        assert len(groups) == 1 and ids(groups[0]["params"]) == ids(p for p in model.parameters() if p.requires_grad)
    model = learned_dit(TaskGate(lr=0.1))
    groups = TrainState.create(model, Constant(), cfg, torch.device("cpu")).optimizer.param_groups
    router = list(model.plan.learned.parameters())
    assert len(groups) == 2 and ids(groups[1]["params"]) == ids(router)
    assert groups[1]["lr"] == 0.1 and groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.01
    assert ids(groups[0]["params"]) == ids(p for n, p in model.named_parameters()
                                           if p.requires_grad and not n.startswith("routing."))


def ids(params) -> list[int]:
    return [id(p) for p in params]


def test_adm_unet_learned_gates_per_routed_layer():
    from dtr_plugins.backbones.adm_unet import build_adm_unet

    model = build_adm_unet(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, channel_mult=[1, 2],
                           attention_resolutions=[4], num_heads=2, num_classes=4)
    widths = model.routed_channels()
    model.attach_routing(RoutingPlan(TaskGate(), widths, T, cond_dim=model.routing_cond_dim()))
    randomized(model)
    seen: list[tuple[int, tuple[int, ...]]] = []
    gate = model.plan.learned.layer_gate
    model.plan.learned.layer_gate = lambda layer, x, tasks, cond: (seen.append((layer, tuple(x.shape))),
                                                                  gate(layer, x, tasks, cond))[1]
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([4, 30]), torch.tensor([0, 3])
    out = model(x, t, y)
    assert [layer for layer, _ in seen] == list(range(len(widths)))  # every routed layer, in forward order
    assert [shape[1] for _, shape in seen] == widths  # each sees its own block input [N, C, H, W]
    out.square().mean().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.plan.learned.parameters())
    model.eval()
    with torch.no_grad():
        ref = model(x, t, y)
        model.plan.export_tables()
        assert torch.equal(model(x, t, y), ref)


def test_learned_gates_under_flow_matching_read_the_noise_level():
    from dtr_plugins.core.continuous_routing import ContinuousTasks

    strategy = TaskGate()
    model = DiT(**TINY)
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(), T, ContinuousTasks(strategy),
                                     cond_dim=model.routing_cond_dim()))
    randomized(model).eval()
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([0, 1])
    t = torch.tensor([1.0, 0.25])  # model time: 1 at the data -> u = 0 and 0.75 -> rows 0 and round(0.75 * 49) = 37
    with torch.no_grad():
        out = model(x, t, y)
        model.plan.export_tables()
        assert torch.equal(model(x, t, y), out)
    h = torch.zeros(2, 16, 32)
    g = model.plan.layer_gate(0, h, t, None)
    torch.testing.assert_close(g[:, 0], torch.sigmoid(strategy.logits[0][[0, 37]]))


def test_backbones_without_learned_gates_refuse_a_learned_plan():
    from dtr_plugins.core.routing import RoutedBackbone

    class Plain(RoutedBackbone):
        def routed_channels(self, site="input"):
            return [4, 4]

    with pytest.raises(ConfigError, match="backbone Plain does not support learned routing strategies"):
        Plain().attach_routing(RoutingPlan(TaskGate(), [4, 4], T))


def test_a_strategy_of_neither_kind_is_one_plugin_error():

    from pydantic import BaseModel

    from dtr_plugins.compose import build_strategy_from
    from dtr_plugins.core.config import config_from_dict

    class NoParams(BaseModel):
        pass

    class Half(torch.nn.Module):  # a learned strategy that forgot task_tables and its declaration
        def bind(self, layer_units, num_tasks, *, site, cond_dim): ...

    registry = registry_with("strategy", "half", Half, params=NoParams, description="incomplete",
                             distribution=("acme-half", "1.0"), module="acme_half")
    cfg = config_from_dict({"name": "x", "backbone": {"name": "dit", **TINY}, "routing": {"name": "half"},
                            "data": {"name": "synthetic", "image_size": 8, "num_classes": 10}}, registry=registry)
    with pytest.raises(PluginError, match=r"strategy 'half' of plugin 'acme_half' \(distribution acme-half\) is "
                                          r"neither a static strategy .* \(lacks layer_gate, learned_routing, "):
        build_strategy_from(cfg, registry)


def test_aux_losses_must_be_named_scalars():
    class Bad(TaskGate):
        def pop_aux_losses(self):
            return {"vector": torch.ones(3)}

    with pytest.raises(PluginError, match="pop_aux_losses must return"):
        RoutingPlan(Bad(), [4], T).pop_aux_losses()


def test_ema_follows_every_learned_routing_parameter_and_buffer_by_value():
    """The trainer's EMA (TrainState.create, ema_update) of a ``switch`` model after a few optimizer steps: each
    router and expert parameter is the by-hand average, and the EMA copy routes with the trained model's
    ``matching`` (and ``forwards``), not with the values it was copied with; a second EMA profile (an ``EmaRule``
    tracking several averages) the same, with its own decay."""
    from dtr_plugins.core.config import config_from_dict
    from dtr_plugins.strategies.switch import SwitchRouting
    from dtr_plugins.training.trainer import TrainState, ema_update
    from dtr_plugins.weighting.constant import Constant

    cfg = config_from_dict({"name": "x", "backbone": {"name": "dit", **TINY}, "routing": {"name": "switch"},
                            "data": {"name": "synthetic", "image_size": 8, "num_classes": 10},
                            "train": {"lr": 0.05}})
    torch.manual_seed(0)
    model = learned_dit(SwitchRouting(num_experts=3, top_k=2, freq_dim=16), seed=1).train()
    state = TrainState.create(model, Constant(), cfg, torch.device("cpu"), profiles=("ema", "slow"))
    learned = {n: p for n, p in model.named_parameters() if n.startswith("routing.learned.")}
    ema_params, slow_params = dict(state.ema.named_parameters()), dict(state.extra_emas[0].named_parameters())
    start = {n: p.detach().clone() for n, p in learned.items()}
    expect = {n: p.detach().clone().double() for n, p in learned.items()}
    slow = dict(expect)
    decay, slow_decay = 0.75, 0.9
    gen = torch.Generator().manual_seed(3)
    matchings = []
    for _ in range(4):
        x = torch.randn(4, 4, 8, 8, generator=gen)
        t, y = torch.randint(0, T, (4,), generator=gen), torch.randint(0, 10, (4,), generator=gen)
        state.optimizer.zero_grad(set_to_none=True)
        out = model(x, t, y)
        (out.square().mean() + sum(model.plan.pop_aux_losses().values())).backward()
        state.optimizer.step()
        for average, beta in zip(state.averages(), [decay, slow_decay], strict=True):
            ema_update(average, model, beta)
        for name, p in learned.items():
            expect[name] = decay * expect[name] + (1 - decay) * p.detach().double()
            slow[name] = slow_decay * slow[name] + (1 - slow_decay) * p.detach().double()
            torch.testing.assert_close(ema_params[name].double(), expect[name], atol=1e-6, rtol=0, msg=name)
            torch.testing.assert_close(slow_params[name].double(), slow[name], atol=1e-6, rtol=0, msg=name)
        buffers = dict(model.named_buffers())
        for average in state.averages():
            for name in ("routing.learned.matching", "routing.learned.forwards"):
                assert torch.equal(dict(average.named_buffers())[name], buffers[name]), name
        matchings.append(buffers["routing.learned.matching"].clone())
    assert int(model.plan.learned.forwards) == 4
    assert any(not torch.equal(m, torch.arange(m.numel())) for m in matchings)  # the matching did move
    for name, p in learned.items():  # every router and expert parameter trained, and the EMA lags behind it
        assert not torch.equal(p.detach(), start[name]) and not torch.equal(ema_params[name], p.detach()), name


# --- pinned by mutation testing (survivors of `make mutate`; see docs/testing.md) ---
# Learned-routing plan behaviour (contract v2) that mutation testing (``make mutate``) found untested: the
# gate layout, exported tables and their refusals, conditioning, and the one-line errors. See docs/testing.md.

def test_gate_like_layouts_dtype_and_refusal():
    rows = torch.tensor([[0.5, 1.0]])
    tokens = gate_like(rows, torch.zeros(1, 3, 2, dtype=torch.float64))
    assert tokens.shape == (1, 1, 2) and tokens.dtype == torch.float64
    assert gate_like(rows, torch.zeros(1, 2, 4, 4, dtype=torch.bfloat16)).shape == (1, 2, 1, 1)
    with pytest.raises(ValueError) as info:
        gate_like(rows, torch.zeros(1, 2))
    assert str(info.value) == "gate_like: block input of shape (1, 2) is neither tokens [N, L, C] nor maps [N, C, H, W]"


def test_static_plan_refuses_learned_calls():
    plan = RoutingPlan(TaskGateless(), [2], num_tasks=3)
    assert plan.export_tables() is False and plan.pop_aux_losses() == {}
    with pytest.raises(ValueError) as info:
        plan.layer_gate(0, torch.zeros(1, 1, 2), torch.tensor([0]), None)
    assert str(info.value) == "this routing plan has no learned strategy"


class TaskGateless:
    def __repr__(self):
        return "static"

    def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
        return torch.ones(num_tasks, channels, dtype=torch.bool)


def test_learned_plan_exports_tables_and_clears_them():
    gate = TaskGate()
    plan = RoutingPlan(gate, [2, 3], num_tasks=4)
    assert plan.extra_repr() == ("strategy=task_gate(init=2.0, weight=0.0), site=input, tasks=4, layers=2, tables=0, "
                                 "learned")
    x, t = torch.zeros(2, 5, 3), torch.tensor([1, 3])
    live = plan.layer_gate(1, x, t, None)
    assert plan.export_tables() is True
    torch.testing.assert_close(plan.layer_gate(1, x, t, None), live)
    with torch.no_grad():
        gate.logits[1].add_(1.0)  # the module changes; the exported tables do not
    torch.testing.assert_close(plan.layer_gate(1, x, t, None), live)
    plan.clear_exported()
    assert not torch.allclose(plan.layer_gate(1, x, t, None), live)
    with pytest.raises(ValueError) as info:
        plan.gather(t, torch.float32)
    assert str(info.value) == "a learned routing plan has no mask rows: blocks ask layer_gate() for their gates"
    with pytest.raises(ValueError) as info:
        plan.tasks_of(torch.tensor([0.5]))
    assert str(info.value) == "float times given to a routing plan built for timestep indices"


def test_token_gates_are_not_exported():
    plan = RoutingPlan(TokenGate(), [2], num_tasks=4)
    assert plan.export_tables() is False
    x = torch.randn(1, 3, 2)
    torch.testing.assert_close(plan.layer_gate(0, x, torch.tensor([1]), None),
                               plan.learned.layer_gate(0, x, torch.tensor([1]), None))


class Bad(TaskGate):
    def __init__(self, tables=None, aux=None):
        super().__init__()
        self.tables, self.aux, self.cond_seen = tables, aux, []

    def task_tables(self, num_tasks):
        return self.tables(self) if self.tables else super().task_tables(num_tasks)

    def layer_gate(self, layer, x, tasks, cond):
        self.cond_seen.append(cond)
        return super().layer_gate(layer, x, tasks, cond)

    def pop_aux_losses(self):
        return self.aux if self.aux is not None else super().pop_aux_losses()


@pytest.mark.parametrize("tables", [
    lambda s: [torch.zeros(4, 2)],  # one table for two layers
    lambda s: [torch.zeros(4, 2), torch.zeros(4, 3, dtype=torch.long)],  # not float
    lambda s: [torch.zeros(4, 2), torch.zeros(4, 4)],  # wrong width
    lambda s: [torch.zeros(4, 2), [[0.0] * 3] * 4],  # not a tensor
])
def test_bad_task_tables_are_one_plugin_error(tables):
    plan = RoutingPlan(Bad(tables=tables), [2, 3], num_tasks=4)
    with pytest.raises(PluginError) as info:
        plan.export_tables()
    assert str(info.value) == ("strategy task_gate(init=2.0, weight=0.0): task_tables must return one float tensor "
                               "[4, C] per routed layer (C = [2, 3])")


def test_conditioning_reaches_the_strategy_and_aux_losses_are_checked():
    bad = Bad(aux={"x": torch.ones(2)})
    plan = RoutingPlan(bad, [2], num_tasks=4)
    cond = torch.ones(1, 5)
    plan.layer_gate(0, torch.zeros(1, 3, 2), torch.tensor([2]), cond)
    assert bad.cond_seen[0] is cond
    with pytest.raises(PluginError) as info:
        plan.pop_aux_losses()
    assert str(info.value) == ("strategy task_gate(init=2.0, weight=0.0): pop_aux_losses must return "
                               "{name: scalar tensor}, got 'x': Tensor (2,)")
    bad.aux = {"y": 0.5}
    with pytest.raises(PluginError) as info:
        plan.pop_aux_losses()
    assert str(info.value).endswith("got 'y': float ()")


class Recording(TaskGate):
    def __init__(self):
        super().__init__()
        self.calls = []

    def bind(self, layer_units, num_tasks, *, site, cond_dim):
        self.calls.append(("bind", site, cond_dim))
        super().bind(layer_units, num_tasks, site=site, cond_dim=cond_dim)

    def task_tables(self, num_tasks):
        self.calls.append(("task_tables", num_tasks))
        return super().task_tables(num_tasks)


class Levels:
    """A continuous process whose noise levels run past [0, 1] (clamped by the plan)."""

    def noise_level(self, t):
        return t * 2 - 0.5


def test_learned_strategy_sees_the_site_width_and_task_count():
    gate = Recording()
    plan = RoutingPlan(gate, [2], num_tasks=4, cond_dim=7)
    plan.export_tables()
    assert gate.calls == [("bind", "input", 7), ("task_tables", 4)]
    static = RoutingPlan(TaskGateless(), [2], num_tasks=3)
    assert static.extra_repr() == "strategy=static, site=input, tasks=3, layers=1, tables=0"


def test_exported_tables_read_the_nearest_clamped_row_for_float_times():
    gate = TaskGate()
    plan = RoutingPlan(gate, [2], num_tasks=4, continuous=Levels())
    plan.export_tables()
    x = torch.zeros(2, 1, 2)
    got = plan.layer_gate(0, x, torch.tensor([-1.0, 2.0]), None)  # levels -2.5 and 3.5
    expect = torch.sigmoid(gate.logits[0].detach())[[0, 3]][:, None, :]
    torch.testing.assert_close(got, expect)
