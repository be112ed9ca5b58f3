"""The ``conditioner`` plugin kind: ``clip_text`` on a tiny local CLIP, the packed condition, the embedding cache."""
from __future__ import annotations

import pytest
import torch

from dtr_plugins.conditioners.clip_text import ClipTextConditioner
from dtr_plugins.conditioners.text_cache import TextEmbeddingCache, TextStage
from dtr_plugins.core.contracts import Conditioner
from dtr_plugins.core.errors import ConfigError, DataError
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.core.text_condition import pack, unpack

from ..t2i_helpers import TINY_TEXT_DIM, TINY_TEXT_LENGTH, tiny_clip_folder


@pytest.fixture
def clip_dir(tiny_clip_dir):
    return tiny_clip_dir


def test_clip_text_is_registered_and_satisfies_the_contract(clip_dir):
    info = default_registry().get("conditioner", "clip_text")
    enc = info.build(path=str(clip_dir), max_length=TINY_TEXT_LENGTH)
    assert isinstance(enc, Conditioner)
    tokens, pooled, mask = enc.encode(["a photo of a sneaker", "a"])
    assert tokens.shape == (2, TINY_TEXT_LENGTH, TINY_TEXT_DIM) and pooled.shape == (2, TINY_TEXT_DIM)
    assert mask.dtype == torch.bool and mask.shape == (2, TINY_TEXT_LENGTH)
    # the longer text has more real tokens; "a" is BOS, a, EOS
    assert int(mask[0].sum()) > int(mask[1].sum()) == 3
    assert not torch.equal(tokens[0], tokens[1])
    assert all(not p.requires_grad for p in enc._load()[0].parameters())


def test_fingerprint_follows_the_weights_not_the_path(tmp_path, clip_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(clip_dir, copy)
    assert ClipTextConditioner(str(copy)).fingerprint() == ClipTextConditioner(str(clip_dir)).fingerprint()
    other = tiny_clip_folder(tmp_path / "other", seed=1)
    assert ClipTextConditioner(str(other)).fingerprint() != ClipTextConditioner(str(clip_dir)).fingerprint()
    assert (ClipTextConditioner(str(clip_dir), max_length=8).fingerprint()
            != ClipTextConditioner(str(clip_dir)).fingerprint())


def test_a_missing_folder_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="text.path: folder .* does not exist"):
        ClipTextConditioner(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        ClipTextConditioner(str(tmp_path / "empty"))


def test_pack_unpack_round_trip():
    tokens, pooled = torch.randn(3, 5, 4), torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    packed = pack(tokens, pooled, mask)
    assert packed.shape == (3, 6, 5)
    t, p, m = unpack(packed)
    assert torch.equal(t, tokens) and torch.equal(p, pooled) and torch.equal(m, mask)
    with pytest.raises(ValueError, match="disagree"):
        pack(tokens, pooled[:2], mask)


def test_cache_encodes_each_caption_once_and_reads_it_back_exactly(tmp_path, clip_dir):
    enc = ClipTextConditioner(str(clip_dir), max_length=TINY_TEXT_LENGTH)
    cache = TextEmbeddingCache(enc, tmp_path / "cache", memory=0)
    first = cache.get(["a cat", "a dog", "a cat"])
    assert cache.encoded == 2 and torch.equal(first[0], first[2])
    again = TextEmbeddingCache(ClipTextConditioner(str(clip_dir), max_length=TINY_TEXT_LENGTH), tmp_path / "cache")
    second = again.get(["a dog", "a cat"])
    assert again.encoded == 0  # read from disk, no encoder run
    assert torch.equal(second[0], first[1]) and torch.equal(second[1], first[0])
    tokens, pooled, mask = enc.encode(["a cat"])
    assert torch.allclose(second[1], pack(tokens, pooled, mask)[0], atol=1e-6)
    # a different encoder (max_length changes the fingerprint) does not read these files
    other = TextEmbeddingCache(ClipTextConditioner(str(clip_dir), max_length=8), tmp_path / "cache")
    assert other.get(["a cat"]).shape == (1, 9, TINY_TEXT_DIM + 1) and other.encoded == 1
    # a damaged file is one DataError naming it
    cache.file("a dog").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable text-embedding cache file"):
        TextEmbeddingCache(enc, tmp_path / "cache").get(["a dog"])


def test_stage_draws_a_caption_per_item_then_drops_to_the_empty_caption(tmp_path, clip_dir):
    enc = ClipTextConditioner(str(clip_dir), max_length=TINY_TEXT_LENGTH)
    sets = [["zero", "nought"], ["one"], ["two", "deux", "zwei"]]
    stage = TextStage(TextEmbeddingCache(enc, tmp_path), sets, caption_dropout=0.5)
    labels = torch.tensor([0, 1, 2, 1] * 8)
    torch.manual_seed(0)
    y = stage.training_condition(labels)
    torch.manual_seed(0)
    drawn = stage.drawn_captions(labels)  # the same draws, in the same order
    drop = torch.rand(len(labels)) < 0.5
    assert all(c in sets[int(i)] for c, i in zip(drawn, labels))
    assert {c for c, i in zip(drawn, labels) if i == 2} == {"two", "deux", "zwei"}  # every caption gets drawn
    null, plain = stage.null()[0], stage.prompts(drawn)
    assert 0 < int(drop.sum()) < len(labels)
    for i in range(len(labels)):
        assert torch.equal(y[i], null if drop[i] else plain[i])
    assert torch.equal(stage.condition(torch.tensor([2])), stage.prompts(["two"]))
    with pytest.raises(DataError, match="item index 7 outside"):
        stage.condition(torch.tensor([7]))
