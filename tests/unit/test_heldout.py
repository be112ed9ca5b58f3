"""Held-out splits of the datasets and the held-out loss per noise band (fixed inputs, direct computation)."""
import numpy as np
import pytest
import torch
from PIL import Image

from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.errors import ConfigError, DataError
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.data.digits import Digits, DigitsParams, heldout_mask
from dtr_plugins.data.image_folder import ImageFolder
from dtr_plugins.data.synthetic import Synthetic, SyntheticParams
from dtr_plugins.evaluation.heldout import (
    HeldOutSet,
    band_edges,
    heldout_dataset_params,
    heldout_losses,
    heldout_record,
    heldout_set_for,
)

T = 100


# ------------------------------------------------------------------------------------------ splits
def test_digits_heldout_is_a_fixed_stratified_tenth_never_in_train():
    torch.manual_seed(1)
    held = Digits(split="heldout")
    torch.manual_seed(2)  # a run's seed must not move the split
    held_again, train, every = Digits(split="heldout"), Digits(), Digits(split="all")
    assert torch.equal(held.images, held_again.images)
    assert len(held) == 179 and len(train) == 1618 and len(held) + len(train) == len(every) == 1797
    mask = heldout_mask(every.labels)
    assert torch.equal(train.images, every.images[~mask]) and torch.equal(held.images, every.images[mask])
    counts = torch.bincount(held.labels, minlength=10)
    totals = torch.bincount(every.labels, minlength=10)
    assert torch.equal(counts, torch.round(totals * 0.1).long())  # every class, 10% of it
    assert DigitsParams().split == "train"


def test_digits_old_splits_unchanged():
    a, b = Digits(split="a"), Digits(split="b")
    assert len(a) + len(b) == 1797


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_image_folder_heldout_by_name_hash_is_stable_when_files_are_added(tmp_path):
    for i in range(40):
        _png(tmp_path / ("cat" if i % 2 else "dog") / f"{i:03d}.png", i)
    train = ImageFolder(str(tmp_path), 8, heldout_fraction=0.3)
    held = ImageFolder(str(tmp_path), 8, split="heldout", heldout_fraction=0.3)
    assert len(train) + len(held) == 40 and 0 < len(held) < 40
    assert not set(train.files) & set(held.files)
    assert train.class_index == held.class_index == {"cat": 0, "dog": 1}
    for i in range(40, 80):
        _png(tmp_path / "cat" / f"{i:03d}.png", i)
    held_more = ImageFolder(str(tmp_path), 8, split="heldout", heldout_fraction=0.3)
    assert set(held.files) <= set(held_more.files)  # old files stay where they were
    assert len(ImageFolder(str(tmp_path), 8)) == 80  # fraction 0: everything trains, as before
    with pytest.raises(DataError, match="heldout_fraction"):
        ImageFolder(str(tmp_path), 8, split="heldout")


def test_synthetic_heldout_is_other_draws_and_leaves_train_alone():
    train, held = Synthetic(), Synthetic(split="heldout", heldout_samples=16)
    assert torch.equal(train.images, Synthetic(split="train", heldout_samples=3).images)
    assert len(held) == 16 and not torch.equal(held.images, train.images[:16])
    assert torch.equal(held.images, Synthetic(split="heldout", heldout_samples=16).images)


def test_heldout_dataset_params():
    assert heldout_dataset_params("digits", DigitsParams, {"image_size": 8, "random_flip": True}) == {
        "image_size": 8, "channels": 1, "random_flip": False, "split": "heldout"}  # the params model's own split
    assert heldout_dataset_params("synthetic", SyntheticParams, {})["split"] == "heldout"
    from pydantic import BaseModel

    class NoSplit(BaseModel):
        path: str = ""

    with pytest.raises(ConfigError, match="dataset 'mine' declares no held-out split"):
        heldout_dataset_params("mine", NoSplit, {})
    held = heldout_set_for(default_registry(), "digits", {"image_size": 8, "random_flip": True}, T, per_band=179)
    assert sorted(held.x0[:179].flatten(1).tolist()) == sorted(Digits(split="heldout").images.flatten(1).tolist())


# ------------------------------------------------------------------------------------- fixed inputs
def test_band_edges_match_the_training_buckets():
    for steps, bands in [(1000, 10), (100, 10), (37, 10), (10, 10)]:
        edges = band_edges(steps, bands)
        assert edges[0][0] == 0 and edges[-1][1] == steps
        for b, (lo, hi) in enumerate(edges):
            assert lo < hi and all(t * bands // steps == b for t in range(lo, hi))
    with pytest.raises(ValueError):
        band_edges(5, 10)


def test_heldout_inputs_identical_across_constructions_whatever_the_run_seed():
    data = Digits(split="heldout")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = HeldOutSet.build(data, 1000, per_band=8, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the run's RNG stream is untouched
    torch.manual_seed(123)  # another run seed
    second = HeldOutSet.build(Digits(split="heldout"), 1000, per_band=8, seed=0)
    for name in ("x0", "labels", "t", "noise", "band"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.fingerprint == second.fingerprint and len(first) == 80
    other = HeldOutSet.build(data, 1000, per_band=8, seed=1)
    assert other.fingerprint != first.fingerprint and not torch.equal(other.noise, first.noise)
    # stratified: band b holds per_band timesteps of [100 b, 100 b + 100), one in each tenth of it
    assert torch.equal(first.t // 100, first.band)
    for b in range(10):
        ts = first.t[first.band == b]
        i = torch.arange(8)
        assert ((ts - 100 * b >= i * 100 // 8) & (ts - 100 * b <= -(-(i + 1) * 100 // 8) - 1)).all()
    # the same images in every band
    assert torch.equal(first.x0[:8], first.x0[8:16]) and torch.equal(first.labels[:8], first.labels[72:])


def test_prepare_maps_images_once_with_fixed_randomness():
    """A latent backbone's encoder samples its posterior: the held-out latents must still be fixed."""
    def encode(images):  # [N, 1, 8, 8] -> a noisy "latent" [N, 2, 4, 4]
        pooled = torch.nn.functional.avg_pool2d(images, 2)
        return torch.cat([pooled, pooled + torch.randn_like(pooled)], dim=1)

    data = Synthetic(split="heldout", heldout_samples=16)
    torch.manual_seed(5)
    first = HeldOutSet.build(data, T, per_band=4, seed=0, prepare=encode)
    torch.manual_seed(6)
    second = HeldOutSet.build(data, T, per_band=4, seed=0, prepare=encode)
    assert first.x0.shape == first.noise.shape == (40, 2, 4, 4)
    assert torch.equal(first.x0, second.x0) and first.fingerprint == second.fingerprint


def _tiny_dit():
    registry = default_registry()
    model = registry.build("backbone", "dit", input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                           in_channels=1, num_classes=10, class_dropout_prob=0.5)
    model.attach_routing(RoutingPlan(registry.build("strategy", "dtr", alpha=4.0, beta=0.8), model.routed_channels(),
                                     num_tasks=T))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # DiT zero-initialises its output layer: perturb so the output depends on x, t, y
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def test_heldout_loss_equals_a_direct_computation():
    model = _tiny_dit().train()
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", T), learn_sigma=True)
    heldout = HeldOutSet.build(Digits(split="heldout"), T, per_band=6, seed=0)
    got = heldout_losses(model, diffusion, heldout, lambda y: {"y": y}, batch_size=7)
    assert model.training  # mode restored

    model.eval()
    abar = torch.from_numpy(np.cumprod(1.0 - get_named_beta_schedule("linear", T)))
    with torch.no_grad():
        a = abar[heldout.t].float().view(-1, 1, 1, 1)
        x_t = a.sqrt() * heldout.x0 + (1 - a).sqrt() * heldout.noise
        eps = model(x_t, heldout.t, y=heldout.labels)[:, :1]
        mse = ((heldout.noise - eps) ** 2).mean(dim=(1, 2, 3)).double()
    want = {f"heldout/band{b}": float(mse[b * 6:(b + 1) * 6].mean()) for b in range(10)}
    want["heldout/total"] = float(mse.mean())
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert got["heldout/band0"] != pytest.approx(got["heldout/band9"])  # the bands really differ

    # label dropout is a training-mode behaviour: scoring in training mode would give other numbers
    with torch.no_grad():
        torch.manual_seed(0)
        assert not torch.allclose(model.train()(x_t, heldout.t, y=heldout.labels)[:, :1], eps)
    again = heldout_losses(model.train(), diffusion, heldout, lambda y: {"y": y})
    assert again == pytest.approx(got, rel=1e-5)
    with pytest.raises(ValueError, match="T = 100"):
        heldout_losses(model, GaussianDiffusion(get_named_beta_schedule("linear", 50)), heldout)

    record = heldout_record(400, got, heldout, weights="ema")
    assert record["step"] == 400 and record["heldout"]["total"] == got["heldout/total"]
    assert record["heldout"]["fingerprint"] == heldout.fingerprint and record["heldout"]["term"] == "mse"


def test_runs_of_one_seed_start_from_the_same_weights_whatever_the_routing():
    """The premise of pairing: routing adds no parameters, so one seed gives one initial model."""
    registry = default_registry()
    states = []
    for name, params in [("vanilla", {}), ("dtr", {"alpha": 4.0, "beta": 0.8}), ("random", {"beta": 0.8, "seed": 0})]:
        torch.manual_seed(7)
        model = registry.build("backbone", "dit", input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                               in_channels=1, num_classes=10)
        model.attach_routing(RoutingPlan(registry.build("strategy", name, **params), model.routed_channels(),
                                         num_tasks=T))
        states.append(model.state_dict())
    for other in states[1:]:
        assert other.keys() == states[0].keys()
        assert all(torch.equal(other[k], states[0][k]) for k in other)


def test_continuous_heldout_times_are_flow_times_stratified_in_bands_of_u():
    """Flow matching: band b holds per_band float times t = 1 - u with u stratified in [b / 10, (b + 1) / 10),
    the flow's own loss_bucket rule; the images and noise are those of the discrete set, the fingerprint not."""
    from dtr_plugins.core.flow import FlowMatching

    data = Digits(split="heldout")
    cont = HeldOutSet.build(data, T, per_band=8, seed=0, time="continuous")
    disc = HeldOutSet.build(data, T, per_band=8, seed=0)
    assert cont.t.dtype == torch.float32 and cont.time == "continuous" and disc.time == "discrete"
    assert ((cont.t >= 0) & (cont.t <= 1)).all()
    assert torch.equal(FlowMatching(steps=T).loss_bucket(cont.t, 10), cont.band)
    u = 1 - cont.t.double()
    for b in range(10):
        i = torch.arange(8, dtype=torch.float64)
        ub = u[cont.band == b]
        lo, hi = (b + i / 8) / 10, (b + (i + 1) / 8) / 10  # one draw in each eighth of the band
        assert ((ub >= lo - 1e-7) & (ub <= hi + 1e-7)).all(), b
    assert torch.equal(cont.x0, disc.x0) and torch.equal(cont.labels, disc.labels)
    assert cont.fingerprint != disc.fingerprint
    again = HeldOutSet.build(Digits(split="heldout"), T, per_band=8, seed=0, time="continuous")
    assert torch.equal(again.t, cont.t) and again.fingerprint == cont.fingerprint
    with pytest.raises(ValueError, match="time must be one of"):
        HeldOutSet.build(data, T, per_band=8, time="minutes")


def test_continuous_heldout_loss_is_the_velocity_mse_per_band():
    from dtr_plugins.core.flow import FlowMatching

    registry = default_registry()
    model = registry.build("backbone", "dit", input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2,
                           in_channels=1, num_classes=10, class_dropout_prob=0.5, learn_sigma=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    heldout = HeldOutSet.build(Digits(split="heldout"), T, per_band=5, seed=0, time="continuous")
    got = heldout_losses(model, FlowMatching(steps=T), heldout, lambda y: {"y": y}, batch_size=7)
    model.eval()
    with torch.no_grad():
        t = heldout.t.view(-1, 1, 1, 1)
        x_t = t * heldout.x0 + (1 - t) * heldout.noise  # SiT's linear path, data at t = 1
        v = model(x_t, heldout.t, y=heldout.labels)
        mse = ((heldout.x0 - heldout.noise - v) ** 2).mean(dim=(1, 2, 3)).double()
    for b in range(10):
        assert got[f"heldout/band{b}"] == pytest.approx(float(mse[b * 5:(b + 1) * 5].mean()), rel=1e-5), b
    assert got["heldout/total"] == pytest.approx(float(mse.mean()), rel=1e-5)
    record = heldout_record(7, got, heldout, weights="ema")
    assert record["heldout"]["time"] == "continuous" and record["heldout"]["fingerprint"] == heldout.fingerprint


def test_a_split_smaller_than_per_band_warns_and_records_the_distinct_images():
    data = Synthetic(split="heldout", heldout_samples=5)
    with pytest.warns(UserWarning, match=r"5 image\(s\) for 8 rows per band .* averages 5 distinct image\(s\), not 8"):
        held = HeldOutSet.build(data, T, num_bands=2, per_band=8, seed=0)
    assert held.images == 5
    record = heldout_record(4, {"heldout/band0": 1.0, "heldout/band1": 2.0, "heldout/total": 1.5}, held,
                            weights="ema")
    assert record["heldout"]["images"] == 5 and record["heldout"]["per_band"] == 8
    assert HeldOutSet.build(Synthetic(split="heldout", heldout_samples=16), T, num_bands=2, per_band=8).images == 8
