"""Bad inputs that used to end in a traceback (Trust v3, item 13): a run name too long for a file name, a seed torch
cannot take, an output_dir that cannot be created, a full disk during torch.save, a swapped latent-cache shard."""
import json

import pytest
import torch

from dtr_plugins.codecs.latent_cache import CACHE_FORMAT, LatentCacheDataset, shard_file
from dtr_plugins.core.errors import DataError
from dtr_plugins.core.io import creatable_folder_problem, save_torch

from ..conftest import ROOT

CONFIG = str(ROOT / "configs" / "dit_digits.yaml")


def one_line(code, err):
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("setting", "words"), [
    ("name=" + "a" * 300, "name: 'aaaaaaaaaaaaaaaaaaaa'... is 300 characters long; at most 200 allowed"),
    ("seed=18446744073709551616", "seed: Input should be less than or equal to 9223372036854775807"),
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
])
def test_validate_refuses_names_and_seeds_that_cannot_work(run_cli, setting, words):
    assert words in one_line(*run_cli("validate", CONFIG, "--config-only", "--set", setting)[::2])


def test_validate_refuses_an_output_dir_that_cannot_be_created(tmp_path, run_cli):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, words in ((afile / "runs", f"'{afile}' is a file, not a folder"),
                       ("/proc/dtr-runs/x", "cannot create folders in '/proc'")):
        err = one_line(*run_cli("validate", CONFIG, "--set", f"output_dir={out}")[::2])
        assert f"output_dir: {words}" in err
    assert creatable_folder_problem(tmp_path / "new" / "deeper") is None
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]  # the check leaves nothing behind


def test_a_full_disk_during_torch_save_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    path = tmp_path / "0000006.pt"
    with pytest.raises(OSError, match="disk full") as caught:
        save_torch({"x": torch.zeros(2)}, path)
    assert caught.value.filename == str(path) and caught.value.errno == 28
    assert list(tmp_path.iterdir()) == []  # no temp file left


def _cache(root, sizes):
    root.mkdir()
    start = 0
    for i, n in enumerate(sizes):
        torch.save({"posterior": torch.full((n, 2, 2, 1, 2, 2), float(i)), "labels": torch.zeros(n, dtype=torch.long),
                    "start": start}, shard_file(root, i))
        start += n
    (root / "manifest.json").write_text(json.dumps({"format": CACHE_FORMAT, "complete": True, "num_items": start,
                                                    "shard_size": sizes[0], "latent_shape": [1, 2, 2]}))


def test_a_swapped_latent_cache_shard_is_refused_naming_it(tmp_path):
    root = tmp_path / "cache"
    _cache(root, [4, 4, 2])
    assert float(LatentCacheDataset(root)[9][0].mean()) == 2.0
    a, b = shard_file(root, 0), shard_file(root, 2)
    a.rename(tmp_path / "t")
    b.rename(a)
    (tmp_path / "t").rename(b)
    data = LatentCacheDataset(root)
    with pytest.raises(DataError, match=r"shard-00002.pt: not shard 2 of this cache \(expected 2 items from item 8, "
                                        r"found a shard starting at 0\)"):
        data[9]
    with pytest.raises(DataError, match="shard-00000.pt: not shard 0"):
        data[0]
