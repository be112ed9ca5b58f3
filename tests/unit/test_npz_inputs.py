"""An ``.npz`` someone else made (a reference batch, a sample set): one clear line for every way it can be broken,
found by ``dtr validate`` before training, never numpy's or zipfile's traceback."""
from pathlib import Path

import numpy as np
import pytest

from dtr_plugins.core.config import load_config
from dtr_plugins.core.errors import ConfigError, DataError
from dtr_plugins.evaluation.inputs import npz_images, npz_keys
from dtr_plugins.evaluation.references import check_config_reference, resolve_reference

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "dit_digits.yaml"


@pytest.fixture
def broken(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, np.zeros((4, 8, 8, 1), np.uint8))
    files = {"truncated": good.read_bytes()[:500], "text": b"mu sigma\n1 2\n", "empty": b""}
    for name, data in files.items():
        (tmp_path / f"{name}.npz").write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("name", ["truncated", "text", "empty"])
def test_a_broken_npz_is_one_line_naming_the_file_as_samples_and_as_reference(broken, name):
    path = broken / f"{name}.npz"
    message = rf"{name}.npz: not an .npz archive \(numpy's zip of arrays"
    with pytest.raises(DataError, match=message):
        npz_keys(path)
    with pytest.raises(DataError, match=message):
        npz_images(path)
    with pytest.raises(DataError, match=message):  # found when the reference is resolved, before any image is read
        resolve_reference(str(path), (8, 8))
    assert "pickled" not in str(pytest.raises(DataError, npz_images, path).value)  # numpy's misleading advice


def test_validate_finds_an_unreadable_reference_that_training_would_find_after_its_last_step(broken):
    cfg = load_config(REPO_CONFIG, overrides=[f"eval.reference={broken / 'truncated.npz'}"])
    with pytest.raises(ConfigError, match=r"^eval.reference: .*truncated.npz: not an .npz archive"):
        check_config_reference(cfg)
    ok = load_config(REPO_CONFIG, overrides=[f"eval.reference={broken / 'good.npz'}"])
    check_config_reference(ok)  # a readable one passes
    assert npz_keys(broken / "good.npz") == ["arr_0"]
