"""``fashion_mnist``: IDX files in Debian's and torchvision's layouts, the splits, and one-line errors."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from dtr_plugins.core.errors import DataError
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.data.fashion_mnist import CLASSES, DEBIAN_PATH, FILES, SIZES, FashionMNIST


def idx_bytes(array: torch.Tensor) -> bytes:
    """The IDX encoding of a uint8 tensor: magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + array.contiguous().numpy().tobytes()


def write_split(folder: Path, split: str, images: torch.Tensor, labels: torch.Tensor, *, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(FILES[split], (images, labels), strict=True):
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def fake_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8))


@pytest.mark.parametrize("layout", ["debian", "torchvision_root", "torchvision_raw"])
def test_reads_both_layouts_and_scales_pixels(tmp_path, layout):
    images, labels = fake_data(12, 0)
    test_images, test_labels = fake_data(5, 1)
    folder = {"debian": tmp_path, "torchvision_root": tmp_path / "FashionMNIST" / "raw",
              "torchvision_raw": tmp_path / "raw"}[layout]
    for split, (x, y) in {"train": (images, labels), "test": (test_images, test_labels)}.items():
        write_split(folder, split, x, y, gz=layout == "debian")
    train = FashionMNIST(path=str(tmp_path))
    assert len(train) == 12 and train.num_classes == 10
    image, label = train[3]
    assert image.shape == (1, 28, 28) and label == int(labels[3])
    torch.testing.assert_close(image[0], images[3].float() / 255 * 2 - 1)
    held = FashionMNIST(path=str(tmp_path), split="heldout")
    test = FashionMNIST(path=str(tmp_path), split="test")
    assert torch.equal(held.images, test.images) and held.labels.tolist() == test_labels.long().tolist()


def test_size_channels_and_flip(tmp_path):
    write_split(tmp_path, "train", *fake_data(4, 2), gz=False)
    data = FashionMNIST(path=str(tmp_path), image_size=16, channels=3, random_flip=True)
    assert data[0][0].shape == (3, 16, 16)
    torch.manual_seed(0)
    seen = {bool(torch.equal(data[0][0], data.images[0])) for _ in range(20)}
    assert seen == {True, False}  # flipped sometimes, not always


def test_missing_files_name_the_folder_and_the_package(tmp_path):
    with pytest.raises(DataError) as err:
        FashionMNIST(path=str(tmp_path / "nowhere"))
    line = str(err.value)
    assert "\n" not in line and "nowhere" in line and "apt-get install dataset-fashion-mnist" in line


def test_corrupt_and_mismatched_files_are_one_line(tmp_path):
    write_split(tmp_path, "train", *fake_data(4, 3), gz=False)
    (tmp_path / FILES["train"][1]).write_bytes(idx_bytes(torch.zeros(3, dtype=torch.uint8)))
    with pytest.raises(DataError, match="disagree"):
        FashionMNIST(path=str(tmp_path))
    images = tmp_path / FILES["train"][0]
    for content, why in ((b"", r"it is empty"), (b"\x00\x00", r"its first 2 bytes are not an IDX header"),
                         (b"<html>oops</html>", r"its first 4 bytes are not an IDX header")):
        images.write_bytes(content)
        with pytest.raises(DataError, match=rf"^data.path: {images} is not an IDX file \({why}.*\); reinstall it "
                                            rf"with apt-get install --reinstall dataset-fashion-mnist$"):
            FashionMNIST(path=str(tmp_path))
    images.write_bytes(idx_bytes(torch.zeros(4, 28, 28, dtype=torch.uint8))[:40])  # a header, then cut short
    with pytest.raises(DataError, match="not a readable IDX file"):
        FashionMNIST(path=str(tmp_path))


def test_registered_with_its_params():
    info = default_registry().get("dataset", "fashion_mnist")
    assert info.params.model_fields["path"].default == DEBIAN_PATH
    with pytest.raises(DataError, match="nonexistent-dtr"):
        default_registry().build("dataset", "fashion_mnist", path="/nonexistent-dtr")


def debian_files_present() -> bool:
    return all((Path(DEBIAN_PATH) / f"{name}.gz").is_file() for pair in FILES.values() for name in pair)


def test_the_real_data_set():
    if not debian_files_present():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (make setup does it as root)")
    test = FashionMNIST(split="test")
    assert len(test) == SIZES["test"]
    assert test.labels.bincount(minlength=10).tolist() == [1000] * len(CLASSES)  # balanced, 1,000 per class
    assert test.images.min() == -1 and test.images.max() == 1


def test_declares_its_shape_augmentation_and_held_out_split():
    from dtr_plugins.core.contracts import SupportsAugmentation, SupportsHeldoutSplit, SupportsImageShape
    from dtr_plugins.data.fashion_mnist import FashionMNISTParams

    params = FashionMNISTParams(image_size=32, channels=3, random_flip=True)
    assert isinstance(params, SupportsImageShape) and params.image_shape() == (3, 32, 32)
    assert isinstance(params, SupportsAugmentation) and params.random_hflip() and not params.unaugmented().random_flip
    held = params.heldout_split()
    assert isinstance(params, SupportsHeldoutSplit) and held.split == "test" and not held.random_flip


def test_validate_refuses_a_missing_or_broken_heldout_split_when_heldout_loss_is_asked_for(tmp_path):
    """Only the training files there (or a zero-byte test labels file): `dtr validate` (and so `dtr train`
    before writing anything) says in one line that the held-out split cannot be read, instead of a run that
    trains without its primary metric; with eval.heldout_every: 0 the same data is fine."""
    from dtr_plugins.compose import validate_run
    from dtr_plugins.core.config import load_config
    from dtr_plugins.core.errors import ConfigError

    config = Path(__file__).resolve().parents[2] / "configs" / "fashion_dit.yaml"
    write_split(tmp_path, "train", *fake_data(20, 0), gz=True)
    sets = [f"data.path={tmp_path}", f"output_dir={tmp_path / 'runs'}", "eval.at_end=false"]
    with pytest.raises(ConfigError, match=r"^eval.heldout_every: the held-out split of data 'fashion_mnist' cannot "
                                          r"be read \(data.path: .*t10k-images-idx3-ubyte.* not found"):
        validate_run(load_config(config, overrides=sets))
    validate_run(load_config(config, overrides=[*sets, "eval.heldout_every=0"]))
    write_split(tmp_path, "test", *fake_data(5, 1), gz=True)
    validate_run(load_config(config, overrides=sets))  # the split is there now
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"held-out split .* cannot be read .*t10k-labels-idx1-ubyte.gz"):
        validate_run(load_config(config, overrides=sets))
    assert not (tmp_path / "runs").exists()
