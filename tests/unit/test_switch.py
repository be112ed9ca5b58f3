"""The ``switch`` strategy (Switch-DiT): gate math, the diffusion prior's JSD and matching, by value."""
import itertools
import math

import pytest
import torch

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.strategies.switch import (
    AUX_LOSS,
    SwitchRouting,
    apply_experts,
    js_divergence,
    match_units,
    top_k_gates,
    top_k_selection,
    window_prior,
)


def bound(layers=(4, 4), tasks=10, **params) -> SwitchRouting:
    s = SwitchRouting(**{"embed_dim": 8, "freq_dim": 16, **params})
    s.bind(list(layers), tasks, site="input", cond_dim=None)
    return s


def randomise_experts(s: SwitchRouting, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in s.layers:
            layer.expert_weight.copy_(torch.randn(layer.expert_weight.shape, generator=g) * 0.3)
            layer.expert_bias.copy_(torch.randn(layer.expert_bias.shape, generator=g) * 0.3)


def test_top_k_gates_keep_the_k_largest_probabilities_unnormalised():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    assert torch.equal(top_k_gates(probs, 2), torch.tensor([[0.5, 0.3, 0.0], [0.0, 0.6, 0.3]]))
    assert torch.equal(top_k_selection(probs, 1), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))


def test_experts_sum_gated_per_token_linear_maps():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, generator=g)  # [N, L, C]
    w, b = torch.randn(3, 2, 2, generator=g), torch.randn(3, 2, generator=g)
    gates = torch.tensor([[0.5, 0.0, 0.25], [0.0, 0.7, 0.1]])
    want = torch.zeros_like(x)
    for n, tok, e in itertools.product(range(2), range(3), range(3)):
        want[n, tok] += gates[n, e] * (x[n, tok] @ w[e] + b[e])
    torch.testing.assert_close(apply_experts(x, gates, w, b), want)
    maps = x.transpose(1, 2).reshape(2, 2, 3, 1)  # the same tokens as a [N, C, H, W] feature map
    torch.testing.assert_close(apply_experts(maps, gates, w, b), want.transpose(1, 2).reshape(2, 2, 3, 1))


def test_gate_is_exactly_one_at_init_and_one_plus_experts_after():
    s = bound(layers=(4, 4), tasks=10)
    x = torch.randn(3, 5, 4)
    t = torch.tensor([0, 4, 9])
    assert torch.equal(s.layer_gate(0, x, t), torch.ones_like(x))
    assert torch.equal(x * s.layer_gate(1, x, t), x)  # the routed input equals the plain one bit for bit
    randomise_experts(s)
    probs = s.probabilities(t)  # [N, depth, E]
    assert probs.shape == (3, 2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2))
    layer = s.layers[1]
    want = 1 + apply_experts(x, top_k_gates(probs[:, 1], 2), layer.expert_weight, layer.expert_bias)
    torch.testing.assert_close(s.layer_gate(1, x, t), want)
    # training mode with gradients: the first two calls were one whole forward (one prior loss); the
    # lone third call covered only one layer and is not scored
    assert len(s.pop_aux_losses()) == 1 and s._losses == []


def test_window_prior_by_value():
    # U = 6 units, 4 active, T = 3, alpha = 1: starts round([0, 0.5, 1] * 2) = [0, 1, 2]
    want = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.float32)
    assert torch.equal(window_prior(6, 4, 3, alpha=1.0), want)
    # alpha = 4: (0.5 ** 4) * 2 = 0.125 -> 0
    assert torch.equal(window_prior(6, 4, 3, alpha=4.0)[1], want[0])
    # the active count is depth * k in integers: 84 units, k/E = 2/3 -> 56 (upstream computes int(84 * 2/3))
    assert int(window_prior(84, 56, 5, alpha=4.0).sum(1).unique()) == 56


def _cost(sel, win, match):
    return float(sum((sel[:, i] - win[:, match[i]]).abs().sum() for i in range(sel.shape[1])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_is_a_minimum_cost_assignment(seed):
    g = torch.Generator().manual_seed(seed)
    sel = (torch.rand(7, 5, generator=g) > 0.5).float()
    win = window_prior(5, 2, 7, alpha=1.0)
    best = min(_cost(sel, win, p) for p in itertools.permutations(range(5)))
    for gen in (None, torch.Generator().manual_seed(seed)):
        match = match_units(sel, win, gen)
        assert sorted(match.tolist()) == list(range(5))
        assert _cost(sel, win, match) == best
    # a table that is the window with its columns shuffled is matched back exactly
    perm = torch.randperm(5, generator=g)
    distinct = window_prior(5, 1, 7, alpha=1.0)  # one unit per row: every column differs
    assert torch.equal(match_units(distinct[:, perm], distinct), perm)


def test_js_divergence_against_hand_computation():
    a = torch.tensor([[0.5, 0.5, 0.0]])
    b = torch.tensor([[0.0, 0.5, 0.5]])
    # m = [.25, .5, .25]; KL(a||m) = .5 ln 2 = KL(b||m); JSD = .5 ln 2 (up to the 1e-6 inside the logs)
    assert js_divergence(a, b).item() == pytest.approx(0.5 * math.log(2), abs=1e-5)
    eps = 1e-6
    exact = 0.5 * (2 * 0.5 * (math.log(0.5 + eps) - math.log(0.25 + eps)))
    assert js_divergence(a, b).item() == pytest.approx(exact, rel=1e-6)
    assert js_divergence(a, a).item() == pytest.approx(0.0, abs=1e-7)


def test_prior_loss_by_hand():
    s = bound(layers=(4, 4), tasks=5, alpha=1.0)  # U = 6, 4 active
    probs = torch.tensor([[0.6, 0.3, 0.1, 0.2, 0.2, 0.6]])  # one sample, two layers of E = 3
    t = torch.tensor([2])  # start round(0.5 * 2) = 1: window units 1..4
    s.matching.copy_(torch.tensor([5, 4, 3, 2, 1, 0]))  # gate unit i pairs with window column 5 - i
    target = torch.tensor([[0.0, 0.25, 0.25, 0.25, 0.25, 0.0]])[:, [5, 4, 3, 2, 1, 0]]
    want = js_divergence(probs / 2, target)
    assert s.prior_loss(probs, t).item() == pytest.approx(want.item(), rel=1e-6)
    a, b = (probs / 2)[0].tolist(), target[0].tolist()
    hand = 0.0
    for p, q in zip(a, b):
        m = (p + q) / 2
        hand += p * (math.log(p + 1e-6) - math.log(m + 1e-6)) + q * (math.log(q + 1e-6) - math.log(m + 1e-6))
    assert s.prior_loss(probs, t).item() == pytest.approx(hand / 2, rel=1e-5)


def _train_forward(s, t, x):
    for layer in range(len(s.layers)):
        s.layer_gate(layer, x, t)


def test_matching_is_refreshed_every_n_training_forwards(monkeypatch):
    s = bound(layers=(4, 4, 4), tasks=20, refresh_every=3).train()
    calls = []
    original = s.refresh_matching
    monkeypatch.setattr(s, "refresh_matching", lambda: (calls.append(int(s.forwards)), original()))
    x, t = torch.randn(2, 3, 4), torch.tensor([1, 17])
    for _ in range(7):
        _train_forward(s, t, x)
    assert calls == [0, 3, 6]
    assert int(s.forwards) == 7
    with torch.no_grad():  # evaluation forwards record nothing and do not count
        _train_forward(s, t, x)
    s.eval()
    _train_forward(s, t, x)
    assert int(s.forwards) == 7
    # the matching is a persistent buffer: a resumed model continues with the same assignment
    assert "matching" in s.state_dict() and "forwards" in s.state_dict() and "window" not in s.state_dict()


def test_aux_loss_is_the_weighted_mean_over_forwards_and_its_gradient_reaches_the_router():
    torch.manual_seed(0)
    s = bound(layers=(4, 4), tasks=10, jsd_weight=0.5, refresh_every=10).train()  # one matching for both
    x, t = torch.randn(2, 3, 4), torch.tensor([0, 9])
    _train_forward(s, t, x)
    _train_forward(s, t[:1], x[:1])
    losses = s.pop_aux_losses()
    assert list(losses) == [AUX_LOSS]
    probs = s.probabilities(t).flatten(1)
    want = 0.5 * (s.prior_loss(probs, t) + s.prior_loss(probs[:1], t[:1])) / 2
    torch.testing.assert_close(losses[AUX_LOSS], want)
    losses[AUX_LOSS].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for name, p in s.named_parameters() if "router" in name or name.startswith("embed"))
    assert s.pop_aux_losses() == {}


def test_weight_zero_prior_gives_the_router_no_gradient():
    s = bound(layers=(4, 4), tasks=10, jsd_weight=0.0).train()
    _train_forward(s, torch.tensor([0, 9]), torch.randn(2, 3, 4))
    loss = s.pop_aux_losses()[AUX_LOSS]
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in s.parameters())


def test_router_embedding_and_exactly_the_selected_experts_get_gradients():
    s = bound(layers=(4, 4), tasks=10).train()
    randomise_experts(s)
    x = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.tensor([2, 7])
    out = sum((s.layer_gate(i, x, t) * x).square().sum() for i in range(2))
    (out + s.pop_aux_losses()[AUX_LOSS]).backward()
    gates = top_k_gates(s.probabilities(t).detach(), 2)  # [N, depth, E]
    for name, p in s.named_parameters():
        assert p.grad is not None, name
        if "expert" in name:  # exactly the experts some sample selected are trained
            layer = int(name.split(".")[1])
            used = (gates[:, layer] > 0).any(0)
            assert torch.equal(p.grad.flatten(1).abs().sum(1) > 0, used), name
        else:
            assert p.grad.abs().sum() > 0, name
    assert x.grad is not None


def test_param_groups_and_task_tables():
    s = bound(layers=(4, 6), tasks=10, gate_lr=3e-4, gate_weight_decay=0.01)
    (group,) = s.param_groups()
    assert group["lr"] == 3e-4 and group["weight_decay"] == 0.01
    assert {id(p) for p in group["params"]} == {id(p) for p in s.parameters()}
    assert "lr" not in bound().param_groups()[0]  # null gate_lr: the optimizer's lr
    assert s.task_tables(10) is None  # the gate depends on the block input: no per-task table to sample from
    tables, unit, value = s.gate_summary(10)
    assert [tuple(tb.shape) for tb in tables] == [(10, 3), (10, 3)] and unit == "expert"
    torch.testing.assert_close(tables[1], s.probabilities(torch.arange(10))[:, 1])
    assert s.layers[1].expert_weight.shape == (3, 6, 6)


@pytest.mark.parametrize("params, key", [({"top_k": 4}, "top_k"), ({"num_experts": 0}, "num_experts"),
                                         ({"refresh_every": 0}, "refresh_every"), ({"jsd_weight": -1}, "jsd_weight"),
                                         ({"experts": 3}, "experts")])
def test_bad_params_are_one_config_error_line(params, key):
    with pytest.raises(ConfigError) as info:
        SwitchRouting(**params)
    assert "\n" not in str(info.value) and key in str(info.value)


# --- pinned by mutation testing (survivors of `make mutate`; see docs/testing.md) ---
# Switch-DiT routing behaviour that mutation testing (``make mutate``) found untested: tie-breaking of the
# matching, per-row JSD and prior targets, continuous tasks, dtypes, and the aux-loss bookkeeping.
# See docs/testing.md.

def test_match_units_ties_follow_only_the_given_generator():
    selected, window = torch.zeros(4, 6), torch.zeros(4, 6)  # every assignment costs 0: the tie-breaking decides
    plain = []
    seeded = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        plain.append(match_units(selected, window))
        seeded.append(match_units(selected, window, torch.Generator().manual_seed(7)))
    assert torch.equal(plain[0], plain[1]) and torch.equal(seeded[0], seeded[1])
    assert sorted(seeded[0].tolist()) == list(range(6)) and seeded[0].dtype == torch.int64
    others = {tuple(match_units(selected, window, torch.Generator().manual_seed(s)).tolist()) for s in range(8)}
    assert len(others) > 1  # the generator's permutations do break the ties


def test_js_divergence_is_a_mean_over_rows():
    a = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    b = torch.tensor([[0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    rows = torch.stack([js_divergence(a[i:i + 1], b[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(js_divergence(a, b), rows.mean())


def test_prior_loss_targets_rows_of_the_window_normalised_per_row():
    s = bound(tasks=10)
    logits = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(logits, -1).flatten(1)  # [N, U = depth * E], each layer's three sum to 1
    tasks = torch.tensor([0, 4, 9])
    target = s.window[tasks][:, s.matching]
    expect = js_divergence(probs / 2, target / target.sum(-1, keepdim=True))
    torch.testing.assert_close(s.prior_loss(probs, tasks), expect)
    # continuous tasks u in [0, 1]: the nearest row round(u * (T - 1)), clamped into the table
    torch.testing.assert_close(s.prior_loss(probs, torch.tensor([-0.2, 0.45, 1.5])), expect)


def test_layer_gate_in_float64_and_aux_losses_after_a_pop():
    s = bound().double().train()
    x, tasks = torch.randn(2, 3, 4, dtype=torch.float64), torch.tensor([1, 8])
    assert s.layer_gate(0, x, tasks).dtype == torch.float64
    s.pop_aux_losses()
    for layer in (0, 1):
        s.layer_gate(layer, x, tasks)  # recording starts again after a pop
    assert set(s.pop_aux_losses()) == {"switch_jsd"}


def test_sinusoid_by_hand_odd_width_and_device():
    from dtr_plugins.strategies.switch import sinusoid

    t = torch.tensor([0.0, 1.0, 12.5])
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(3.0) / 3)  # half = 7 // 2 = 3
    args = t[:, None] * freqs[None]
    expect = torch.cat([torch.cos(args), torch.sin(args), torch.zeros(3, 1)], dim=1)  # padded to 7
    torch.testing.assert_close(sinusoid(t, 7), expect)
    assert sinusoid(torch.zeros(2, device="meta"), 6).device.type == "meta"


def test_probabilities_in_the_modules_dtype_at_least_float32():
    s = bound().double()
    probs = s.probabilities(torch.tensor([0, 5, 9]))
    assert probs.dtype == torch.float64 and probs.shape == (3, 2, 3)  # no float32 round trip in float64
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, dtype=torch.float64))
    low = s.to(torch.bfloat16).probabilities(torch.tensor([0, 5, 9]))
    assert low.dtype == torch.float32  # half-precision logits: the softmax runs in float32
    torch.testing.assert_close(low, probs.float(), atol=0.05, rtol=0)
    assert s.gate_summary(10)[0][0].dtype == torch.float32


def test_bind_defaults_initialisation_and_refusal():
    import pytest

    from dtr_plugins.core.errors import ConfigError

    s = SwitchRouting(freq_dim=256)
    s.bind([4], 10, cond_dim=64)
    assert s.site == "input" and s.embed_in.weight.shape == (64, 256)
    for lin in (s.embed_in, s.embed_out):  # DiT's t_embedder: N(0, 0.02) weights, zero bias
        assert 0.018 < float(lin.weight.detach().std()) < 0.022 and not lin.bias.any()
    with pytest.raises(ConfigError) as info:
        SwitchRouting().bind([4], 10)
    assert str(info.value) == "routing.embed_dim: the backbone gives no conditioning width; set embed_dim"


def test_continuous_tasks_embed_as_their_timestep():
    s = bound(tasks=10)
    by_index = s.embedding(torch.tensor([0, 4, 9]), torch.float32)
    by_level = s.embedding(torch.tensor([0.0, 4 / 9, 1.0]), torch.float32)
    torch.testing.assert_close(by_level, by_index)


def test_window_prior_bounds():
    import pytest

    from dtr_plugins.strategies.switch import window_prior

    assert window_prior(4, 4, 3, 1.0).tolist() == [[1.0] * 4] * 3  # every unit active is allowed
    for active in (0, 5):
        with pytest.raises(ValueError) as info:
            window_prior(4, active, 3, 1.0)
        assert str(info.value) == f"active units {active} outside 1..4"


def test_switch_param_errors_name_the_plugin_and_buffers_persist():
    import pytest

    from dtr_plugins.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^switch\.top_k: "):
        SwitchRouting(top_k=0)
    s = bound()
    assert set(s.state_dict()) >= {"matching", "forwards"} and "window" not in s.state_dict()
    assert s.forwards.dtype == torch.int64 and s.matching.tolist() == list(range(6))


def test_bind_refuses_a_site_other_than_the_block_inputs_naming_what_is_allowed():
    s = SwitchRouting(embed_dim=8, freq_dim=16)
    with pytest.raises(ConfigError) as err:
        s.bind([4, 4], 10, site="heads_mlp", cond_dim=None)
    assert str(err.value) == ("routing.site: 'heads_mlp' is not supported by switch, which gates block inputs "
                              "(allowed: input)")
    with pytest.raises(ConfigError, match=r"^routing.embed_dim: the backbone gives no conditioning width"):
        SwitchRouting(freq_dim=16).bind([4], 10, site="input", cond_dim=None)
