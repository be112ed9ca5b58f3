"""Seeds up to the largest one torch takes (2**63 - 1) work everywhere a seed is mixed with other numbers:
the epoch order of the training batches, the sampling noise, random routing's masks (a fresh user found
``seed: 9223372036854775807`` passing ``dtr validate`` and then failing in training with a traceback)."""
import numpy as np
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.seeds import SEED_MAX, derived
from dtr_plugins.training.batches import StepBatches
from tests.conftest import tiny_dit_config


def test_derived_keeps_a_seed_in_range_and_leaves_small_ones_alone():
    assert SEED_MAX == 2**63 - 1
    assert derived(12345 * 100003 + 7) == 12345 * 100003 + 7  # the draws of existing runs do not change
    assert derived(SEED_MAX * 100003 + 3) == 3
    torch.Generator().manual_seed(derived(SEED_MAX * 1_000_003 + 99))  # no overflow


def test_the_largest_seed_orders_the_batches_of_every_epoch():
    batches = StepBatches(10, 4, 0, 1, seed=SEED_MAX, start_step=0, steps=6)
    drawn = [i for batch in batches for i in batch]
    assert len(drawn) == 24 and set(drawn) == set(range(10))


def test_random_routing_with_the_largest_seed_draws_its_masks():
    from dtr_plugins.strategies.random import RandomRouting

    table = RandomRouting(beta=0.5, seed=SEED_MAX).mask_table(4, 8, layer=3, num_layers=4)
    assert table.shape == (4, 8) and bool((table.sum(dim=1) == 4).all())


@pytest.mark.parametrize("key", ["seed", "eval.heldout_seed"])
def test_a_seed_beyond_what_torch_takes_is_refused_by_the_config(tmp_path, key):
    path = tiny_dit_config(tmp_path, "tiny.yaml")
    dp.load_config(path, overrides=[f"{key}={SEED_MAX}"])
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        dp.load_config(path, overrides=[f"{key}={SEED_MAX + 1}"])


def test_training_and_sampling_with_the_largest_seed(tmp_path):
    path = tiny_dit_config(tmp_path, "tiny.yaml")
    cfg = dp.load_config(path, overrides=[f"output_dir={tmp_path}", f"seed={SEED_MAX}", "train.steps=2",
                                          "train.ckpt_every=2", "train.batch_size=4"])
    run = dp.train(cfg, progress=False)
    out = dp.sample(run, num=2, seed=SEED_MAX, out=tmp_path / "s", progress=False)
    assert np.load(out / "samples.npz")["arr_0"].shape[0] == 2


def test_the_synthetic_datasets_held_out_split_takes_the_largest_seed():
    from pydantic import ValidationError

    from dtr_plugins.data.synthetic import Synthetic, SyntheticParams

    params = SyntheticParams(seed=SEED_MAX, split="heldout", heldout_samples=4)
    assert len(Synthetic(**params.model_dump())) == 4
    with pytest.raises(ValidationError, match="seed"):
        SyntheticParams(seed=SEED_MAX + 1)
