"""``time_experts`` (time-split experts: eDiff-I, MEME): the routing of times to experts, the three boundary rules
(against hand-computed cut points), equality with independently built dense models on their intervals (no official
code exists to compare with), gradients reaching only the owning expert, honest parameter counts, a dense file
initialising every expert, and the one-line refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dtr_plugins.backbones.dit import DiT
from dtr_plugins.core.checkpoint import apply_checkpoint
from dtr_plugins.core.contracts import NoiseAxis, SupportsActiveParameters, TimeExpertRouting
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.flow import FlowMatching
from dtr_plugins.core.param_count import parameter_counts
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.runs.rundir import RunDir
from dtr_plugins.strategies.time_experts import TimeExperts, measured_cuts

TINY = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=4)
T = 100


def split_dit(seed: int = 0, **params) -> tuple[DiT, TimeExperts]:
    torch.manual_seed(seed)
    model = DiT(**TINY)
    strategy = TimeExperts(**params)
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(), T, cond_dim=model.routing_cond_dim()))
    return model.eval(), strategy


def random_dit(seed: int) -> DiT:
    """A dense tiny DiT with every weight random (the zero-initialised output layers too)."""
    torch.manual_seed(seed)
    model = DiT(**TINY)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def test_registered_with_its_contracts_and_times_routed_to_their_expert():
    strategy = build_registry().build("strategy", "time_experts", num_experts=4)
    assert isinstance(strategy, TimeExperts) and isinstance(strategy, TimeExpertRouting)
    assert isinstance(strategy, SupportsActiveParameters)
    strategy.bind([32], 10, site="input", cond_dim=32)
    # cuts 1/4, 1/2, 3/4 of T = 10: thresholds ceil(2.5) = 3, 5, ceil(7.5) = 8
    assert strategy.expert_of(torch.arange(10)).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert strategy.intervals() == [{"expert": 0, "timesteps": [0, 3]}, {"expert": 1, "timesteps": [3, 5]},
                                    {"expert": 2, "timesteps": [5, 8]}, {"expert": 3, "timesteps": [8, 10]}]
    strategy.bind_noise(NoiseAxis(num_tasks=10, continuous=True))
    u = torch.tensor([0.0, 0.2499, 0.25, 0.5, 0.99, 1.0])
    assert strategy.expert_of(u).tolist() == [0, 0, 1, 2, 3, 3]
    assert strategy.intervals()[1] == {"expert": 1, "noise_level": [0.25, 0.5]}


def test_uniform_logsnr_cuts_where_the_log_snr_crosses_equal_steps():
    strategy = TimeExperts(num_experts=2, boundaries="uniform_logsnr")
    strategy.bind([32], 5, site="input", cond_dim=None)
    # grid p = t / 5, lambda = -t^2: the midpoint -8 lies 4/5 of the way from t = 2 (-4) to t = 3 (-9): p = 0.56
    strategy.bind_noise(NoiseAxis(num_tasks=5, continuous=False, log_snr=-np.arange(5.0) ** 2))
    assert float(strategy.cuts[0]) == pytest.approx(0.56)
    assert strategy.expert_of(torch.arange(5)).tolist() == [0, 0, 0, 1, 1]
    # flow matching's linear path: lambda(u) = 2 log((1 - u) / u) is odd around u = 1/2, so the cuts are symmetric
    flow = FlowMatching(steps=T)
    grid = (np.arange(T) + 0.5) / T
    four = TimeExperts(num_experts=4, boundaries="uniform_logsnr")
    four.bind([32], T, site="input", cond_dim=None)
    four.bind_noise(NoiseAxis(num_tasks=T, continuous=True, log_snr=flow.log_snr(grid)))
    c = four.cuts.numpy()
    assert c[1] == pytest.approx(0.5) and c[0] + c[2] == pytest.approx(1.0)
    ends = flow.log_snr(grid)[[0, -1]]  # the first cut: a quarter of the way from the cleanest to the noisiest
    assert flow.log_snr(c[:1])[0] == pytest.approx(ends[0] * 3 / 4 + ends[1] / 4, rel=1e-3)
    with pytest.raises(ConfigError, match="routing.boundaries: uniform_logsnr needs a process that reports"):
        four.bind_noise(NoiseAxis(num_tasks=T, continuous=True, log_snr=None))


def heldout_run(folder: Path, bands: list[float], time: str = "discrete") -> Path:
    record = {"step": 6, "heldout": {**{f"band{b}": v for b, v in enumerate(bands)}, "total": sum(bands) / len(bands),
                                     "time": time, "num_bands": len(bands)}}
    folder.mkdir(parents=True, exist_ok=True)
    run = RunDir(folder)
    run.append_metrics({"step": 2, "loss": 1.0})
    run.append_metrics(record)
    return folder


def records(run_dir: str) -> list[dict]:
    return RunDir(run_dir).read_metrics()


def test_measured_cuts_give_each_expert_an_equal_share_of_the_heldout_loss(tmp_path):
    # bands [3, 1, 1, 1] of width 1/4, total 6: halves at the end of band 0; thirds at 2/3 of band 0 and end of band 1
    assert measured_cuts(2, [3, 1, 1, 1]) == pytest.approx([0.25])
    assert measured_cuts(3, [3, 1, 1, 1]) == pytest.approx([1 / 6, 0.5])
    run = heldout_run(tmp_path / "run", [3, 1, 1, 1])
    strategy = TimeExperts(num_experts=3, boundaries="measured", measured_from=str(run))
    strategy.bind([32], 12, site="input", cond_dim=None)
    strategy.bind_noise(NoiseAxis(num_tasks=12, continuous=False, run_records=records))
    assert strategy.intervals() == [{"expert": 0, "timesteps": [0, 2]}, {"expert": 1, "timesteps": [2, 6]},
                                    {"expert": 2, "timesteps": [6, 12]}]
    bad = [(tmp_path / "none", "is not a directory"), (heldout_run(tmp_path / "flow", [1, 1], "continuous"),
                                                  "over continuous time"),
           (heldout_run(tmp_path / "zero", [1, 0]), "positive finite loss in each")]
    for folder, message in bad:
        other = TimeExperts(num_experts=2, boundaries="measured", measured_from=str(folder))
        other.bind([32], 12, site="input", cond_dim=None)
        with pytest.raises(ConfigError, match=f"routing.measured_from: .*{message}"):
            other.bind_noise(NoiseAxis(num_tasks=12, continuous=False, run_records=records))
    with pytest.raises(ConfigError, match="routing.measured_from: this model was built without a reader"):
        strategy.bind_noise(NoiseAxis(num_tasks=12, continuous=False))


def test_refusals_name_the_key():
    with pytest.raises(ConfigError, match="time_experts.num_experts"):
        TimeExperts(num_experts=1)
    with pytest.raises(ConfigError, match="time_experts.granularity"):
        TimeExperts(granularity="layer")
    with pytest.raises(ConfigError, match="routing.measured_from: boundaries: measured needs the run directory"):
        TimeExperts(boundaries="measured")
    with pytest.raises(ConfigError, match=r"routing.site: 'heads_mlp' is not supported by time_experts"):
        TimeExperts().bind([4, 4], T, site="heads_mlp", cond_dim=None)
    with pytest.raises(ConfigError, match="routing.num_experts: 8 experts with boundaries uniform_t over 4 timesteps"):
        TimeExperts(num_experts=8).bind([32], 4, site="input", cond_dim=None)
    with pytest.raises(ConfigError, match="routing.granularity: block needs a backbone that declares its blocks"):
        TimeExperts().bind_weights({"w": torch.zeros(2)}, ())


@pytest.mark.parametrize("granularity", ["model", "block"])
def test_two_experts_equal_two_independent_dense_models_on_their_intervals(granularity):
    first, second = random_dit(1), random_dit(2)
    model, strategy = split_dit(granularity=granularity)
    state = dict(first.state_dict())
    for name in strategy.owned:
        state[f"routing.learned.experts.0.{name.replace('.', ':')}"] = second.state_dict()[name]
    model.load_state_dict({**model.state_dict(), **state})
    # the hand-built reference for expert 1: the second model's split weights on the first model's shared ones
    reference = random_dit(1)
    reference.load_state_dict({**first.state_dict(), **{n: second.state_dict()[n] for n in strategy.owned}})
    if granularity == "model":
        assert all(torch.equal(v, second.state_dict()[k]) for k, v in reference.state_dict().items())
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    t = torch.tensor([0, 99, 50, 49, 10, 70])  # expert 1 owns t >= 50
    with torch.no_grad():
        out = model(x, t, y)
        low, high = first(x, t, y), reference(x, t, y)
    mine = t >= 50
    assert torch.allclose(out[~mine], low[~mine], rtol=1e-5, atol=1e-5)
    assert torch.allclose(out[mine], high[mine], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(low[mine], high[mine], atol=1e-3)  # the two experts do differ
    one = model(x[:1], torch.tensor(99), y[:1])  # a scalar time: the whole batch is one expert's
    assert torch.allclose(one, reference(x[:1], torch.tensor([99]), y[:1]), rtol=1e-5, atol=1e-5)


def test_a_sample_trains_only_its_own_expert():
    model, strategy = split_dit()
    model(torch.randn(2, 1, 8, 8), torch.tensor([70, 90]), torch.tensor([0, 1])).square().sum().backward()
    own = dict(model.named_parameters())
    copy = strategy.expert_weights(1)
    assert all(own[n].grad is None for n in strategy.owned)  # expert 0's blocks saw no sample
    assert all(copy[n].grad is not None for n in strategy.owned)
    assert own["x_embedder.proj.weight"].grad is not None  # shared at granularity block


def test_parameter_counts_report_every_expert_in_total_and_one_in_active():
    dense = sum(p.numel() for p in DiT(**TINY).parameters())
    blocks = sum(p.numel() for n, p in DiT(**TINY).named_parameters() if n.startswith("blocks."))
    model, _ = split_dit(num_experts=4)
    assert parameter_counts(model) == {"total": dense + 3 * blocks, "active": dense}
    whole, _ = split_dit(num_experts=2, granularity="model")
    trainable = sum(p.numel() for p in DiT(**TINY).parameters() if p.requires_grad)
    assert parameter_counts(whole) == {"total": dense + trainable, "active": dense}
    assert parameter_counts(DiT(**TINY)) == {"total": dense, "active": dense}


def test_a_dense_checkpoint_initialises_every_expert(tmp_path):
    dense = random_dit(5)
    model, strategy = split_dit(num_experts=3)
    apply_checkpoint(model, {"model": dense.state_dict()}, tmp_path / "dense.pt", use_ema=False,
                     allow_routing_mismatch=True)
    for e in (1, 2):
        assert all(torch.equal(w, dense.state_dict()[n]) for n, w in strategy.expert_weights(e).items())
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], dense.state_dict()["blocks.0.attn.qkv.weight"])
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 50, 99]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.allclose(model(x, t, y), dense(x, t, y), rtol=1e-5, atol=1e-5)  # equal experts: the dense model
    saved = model.state_dict()  # a state with expert keys loads as it is
    assert strategy.adapt_state_dict(saved).keys() == saved.keys()


def test_the_suite_report_shows_total_and_active_parameters_per_group():
    from dtr_plugins.experiments.report import parameter_table
    from dtr_plugins.runs.record import RunRecord

    runs = [RunRecord("experts-s0", group="experts", meta={"parameters": {"total": 88136, "active": 50312}}),
            RunRecord("experts-s1", group="experts", meta={"parameters": {"total": 88136, "active": 50312}}),
            RunRecord("dense-s0", group="dense", meta={"parameters": {"total": 50312, "active": 50312}}),
            RunRecord("old-s0", group="old", meta={})]
    table = parameter_table(runs).splitlines()
    assert table[2] == "| run | total | active per forward |"
    assert table[4:] == ["| `experts` | 88136 | 50312 |", "| `dense` | 50312 | 50312 |"]
    assert parameter_table(runs[3:]) == ""


def test_adm_unet_splits_its_input_middle_and_output_blocks():
    from dtr_plugins.backbones.adm_unet import build_adm_unet

    model = build_adm_unet(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, channel_mult=[1, 2],
                           attention_resolutions=[4], num_heads=2, num_classes=4)
    strategy = TimeExperts(num_experts=2)
    model.attach_routing(RoutingPlan(strategy, model.routed_channels(), T, cond_dim=model.routing_cond_dim()))
    assert strategy.owned and all(n.split(".")[0] in ("input_blocks", "middle_block", "output_blocks")
                                  for n in strategy.owned)
    assert {n.split(".")[0] for n in strategy.owned} == {"input_blocks", "middle_block", "output_blocks"}
    out = model.eval()(torch.randn(2, 1, 8, 8), torch.tensor([3, 80]), torch.tensor([0, 1]))
    assert out.shape[0] == 2 and bool(torch.isfinite(out).all())


def test_the_picture_puts_the_timestep_on_x_and_the_expert_on_y(tmp_path):
    from dtr_plugins.experiments.gate_plots import expert_owner_figure, plot_learned_gates

    model, strategy = split_dit(num_experts=3)
    assert plot_learned_gates(model.plan, tmp_path / "owners.png").stat().st_size > 0
    owner = strategy.expert_of(torch.arange(T)).numpy()
    fig = expert_owner_figure(owner, 3)
    ax = fig.axes[0]
    x, y = ax.lines[0].get_data()
    assert list(x) == list(range(T)) and list(y) == owner.tolist() and ax.get_ylabel() == "expert"
    assert [line.get_xdata()[0] for line in ax.lines[1:]] == [33.5, 66.5]  # the boundaries at t = 34 and 67
