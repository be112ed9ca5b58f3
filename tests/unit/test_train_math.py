"""The trainer's EMA and per-rank data split, pinned by value (no processes, no training loop)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dtr_plugins.ema.builtin import ConstantEma, WarmupEma
from dtr_plugins.training.train import StepBatches
from dtr_plugins.training.trainer import ema_update


def train_cfg(decay: float, warmup: bool) -> SimpleNamespace:
    return SimpleNamespace(train=SimpleNamespace(ema_decay=decay, ema_warmup=warmup))


def ema_decay_at(cfg: SimpleNamespace, step: int) -> float:
    """The decay the ``train.ema_decay`` / ``train.ema_warmup`` shorthand stands for: the ``warmup`` or
    ``constant`` EMA rule (compose.ema_section)."""
    rule = WarmupEma(cfg.train.ema_decay) if cfg.train.ema_warmup else ConstantEma(cfg.train.ema_decay)
    return rule.betas(step)[0]


def two_parameter_model(a: float, b: float) -> torch.nn.Linear:
    """nn.Linear(1, 1): exactly two parameters, weight ``a`` and bias ``b``."""
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(a)
        model.bias.fill_(b)
    return model


def values(model: torch.nn.Module) -> list[float]:
    return [p.item() for p in model.parameters()]


def test_ema_decay_warmup_rule():
    """With warm-up the decay is min(decay, (1 + step) / (10 + step)); without it, the configured decay."""
    assert ema_decay_at(train_cfg(0.9999, True), 0) == pytest.approx(0.1)
    assert ema_decay_at(train_cfg(0.9999, True), 1) == pytest.approx(2 / 11)
    assert ema_decay_at(train_cfg(0.9999, True), 90) == pytest.approx(91 / 100)
    assert ema_decay_at(train_cfg(0.5, True), 90) == 0.5  # capped by the configured decay
    assert ema_decay_at(train_cfg(0.9999, False), 0) == 0.9999


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_by_hand(warmup):
    """ema <- d * ema + (1 - d) * model: it moves towards the model by (1 - d), never the other way."""
    cfg = train_cfg(0.9, warmup)
    ema = two_parameter_model(1.0, -2.0)
    trajectory = [(3.0, 5.0), (-1.0, 0.5), (2.0, 2.0)]  # the model's two parameters after steps 0, 1, 2
    expect = [1.0, -2.0]
    for step, (a, b) in enumerate(trajectory):
        ema_update(ema, two_parameter_model(a, b), ema_decay_at(cfg, step))
        d = min(0.9, (1 + step) / (10 + step)) if warmup else 0.9
        expect = [d * expect[0] + (1 - d) * a, d * expect[1] + (1 - d) * b]
        assert values(ema) == pytest.approx(expect, abs=1e-6), step
    if warmup:  # the numbers themselves: d = 0.1, 2/11, 0.25
        assert values(ema) == pytest.approx([1.4227273, 1.7977273], abs=1e-6)
    else:  # d = 0.9 throughout
        assert values(ema) == pytest.approx([1.082, -0.808], abs=1e-6)


def test_ema_update_leaves_the_model_alone():
    model = two_parameter_model(3.0, 5.0)
    ema_update(two_parameter_model(0.0, 0.0), model, 0.5)
    assert values(model) == [3.0, 5.0]


def test_per_rank_batches_by_value():
    """World size 2, global batch 4, 10 samples, seed 5: each rank reads its own half of the global batch."""
    ranks = [list(StepBatches(10, 4, rank, 2, seed=5, start_step=0, steps=4)) for rank in (0, 1)]
    assert ranks[0] == [[6, 9], [0, 4], [8, 7], [4, 9]]
    assert ranks[1] == [[1, 5], [2, 3], [7, 1], [0, 5]]
    single = list(StepBatches(10, 4, 0, 1, seed=5, start_step=0, steps=4))
    # the two ranks together read exactly what one process reads, rank 0 first
    assert [r0 + r1 for r0, r1 in zip(*ranks)] == single
    # within the first epoch (steps 0 and 1 = 8 of 10 samples) no index is read twice, by any rank
    first_epoch = [i for step in (0, 1) for rank in ranks for i in rank[step]]
    assert len(set(first_epoch)) == 8
    # step 2 crosses into the second epoch's permutation: positions 8, 9 of epoch 0 and 0, 1 of epoch 1
    assert single[2] == [8, 7, 7, 1]


def test_per_rank_batches_resume_mid_run():
    """A resumed run (start_step 2) reads the same indices at steps 2, 3 as the straight one, on every rank."""
    for rank in (0, 1):
        straight = list(StepBatches(10, 4, rank, 2, seed=5, start_step=0, steps=4))
        resumed = list(StepBatches(10, 4, rank, 2, seed=5, start_step=2, steps=4))
        assert resumed == straight[2:]
