"""Switch-DiT routing behaviour that mutation testing (``make mutate``) found untested: tie-breaking of the
matching, per-row JSD and prior targets, continuous tasks, dtypes, and the aux-loss bookkeeping.
See docs/testing.md."""
import torch

from dtr_plugins.strategies.switch import SwitchRouting, js_divergence, match_units


def bound(layers=(4, 4), tasks=10, **params) -> SwitchRouting:
    s = SwitchRouting(**{"embed_dim": 8, "freq_dim": 16, **params})
    s.bind(list(layers), tasks, site="input", cond_dim=None)
    return s


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
