"""image_folder end to end: a corrupt image read by DataLoader workers, and the label-space check in dtr train."""
import json

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from dtr_plugins.core.errors import DataError, user_message
from dtr_plugins.data.image_folder import ImageFolder

from ..conftest import write
from ..unit.test_image_folder import class_folders


# ------------------------------------------------------------------ broken files, also in workers (item 6)
def broken_folder(tmp_path):
    root = class_folders(tmp_path / "d", ["a", "b"])
    bad = root / "b" / "1.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:1500])  # truncated in the pixel data: the header still reads
    return root, bad


def test_corrupt_image_in_dataloader_workers_is_a_data_error_naming_the_file(tmp_path):
    root, bad = broken_folder(tmp_path)
    ds = ImageFolder(str(root), image_size=8)
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    with pytest.raises(DataError) as err:
        list(loader)
    assert type(err.value) is DataError and "Caught DataError in DataLoader worker process" in str(err.value)
    line = user_message(err.value)
    assert line.startswith(f"{bad}: cannot read image: truncated or corrupt (") and "\n" not in line


TRAIN = """\
name: broken
backbone: {name: dit, input_size: 8, patch_size: 4, hidden_size: 16, depth: 1, num_heads: 2, in_channels: 3,
           num_classes: 2}
routing: {name: vanilla}
diffusion: {steps: 50, schedule: linear, learn_sigma: false}
data: {name: image_folder, path: DATA, image_size: 8}
train: {steps: 2, batch_size: 4, num_workers: 2, log_every: 1, ckpt_every: 2}
eval: {at_end: false}
"""


def test_cli_train_with_a_corrupt_image_in_a_worker_is_one_line_exit_2(tmp_path, run_cli):
    root, bad = broken_folder(tmp_path)
    cfg = write(tmp_path / "broken.yaml", TRAIN.replace("DATA", str(root)))
    code, _, err = run_cli("train", str(cfg), "--set", f"output_dir={tmp_path / 'runs'}")
    # (the error may follow an unfinished progress bar on its line)
    errors = [line[line.index("dtr: error:"):] for line in err.splitlines() if "dtr: error:" in line]
    assert code == 2 and len(errors) == 1, err
    assert errors[0].startswith(f"dtr: error: {bad}: cannot read image: truncated or corrupt (")
    assert "Traceback" not in err and "Caught" not in err and "worker" not in err


# ------------------------------------------------------------------ wired into dtr train
LABELS = """\
name: labels
backbone: {name: dit, input_size: 8, patch_size: 4, hidden_size: 16, depth: 1, num_heads: 2, in_channels: 3,
           num_classes: 3}
routing: {name: vanilla}
diffusion: {steps: 50, schedule: linear, learn_sigma: false}
data: {name: image_folder, path: DATA, image_size: 8}
train: {steps: 1, batch_size: 4, log_every: 1, ckpt_every: 1}
eval: {at_end: false}
"""


@pytest.mark.parametrize("names", [["a", "b", "c", "d", "e"], ["a", "b", "c", "d"]])
def test_cli_train_refuses_a_label_space_that_does_not_fit_and_writes_nothing(tmp_path, run_cli, names):
    """5 folders for num_classes 3 was an IndexError traceback; 4 folders exited 0 (class 3 trained as null)."""
    root = class_folders(tmp_path / "d", names)
    cfg = write(tmp_path / "labels.yaml", LABELS.replace("DATA", str(root)))
    code, _, err = run_cli("train", str(cfg), "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 2 and err.strip() == (f"dtr: error: {cfg}: backbone.num_classes is 3 but data 'image_folder' has "
                                         f"{len(names)} classes ({', '.join(names)}); set backbone.num_classes: "
                                         f"{len(names)}, or 1 for an unconditional model")
    assert not (tmp_path / "runs").exists()


def test_cli_train_records_the_class_map(tmp_path, run_cli):
    root = class_folders(tmp_path / "d", ["cat", "dog", "owl"])
    cfg = write(tmp_path / "labels.yaml", LABELS.replace("DATA", str(root)))
    code, _, err = run_cli("train", str(cfg), "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    assert json.loads((tmp_path / "runs" / "labels" / "classes.json").read_text()) == {
        "num_classes": 3, "classes": ["cat", "dog", "owl"], "labels_used": True}
    code, _, err = run_cli("train", str(cfg), "--set", f"output_dir={tmp_path / 'runs1'}", "--set",
                           "backbone.num_classes=1")
    assert code == 0 and "dtr: warning: backbone.num_classes is 1 (unconditional): the 3 classes of data " \
                          "'image_folder' are ignored" in err
    assert json.loads((tmp_path / "runs1" / "labels" / "classes.json").read_text())["labels_used"] is False
