"""image_folder: the label space it declares, the checks against the model's, and broken files as one line."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dtr_plugins.core.errors import ConfigError, DataError, PluginError
from dtr_plugins.core.labels import UNLABELED, check_label_space, class_map
from dtr_plugins.data.digits import Digits
from dtr_plugins.data.image_folder import ImageFolder


def png(path, value=0, size=8, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value).save(path)
    return path


def class_folders(root, names, per_class=2):
    for c, name in enumerate(names):
        for i in range(per_class):
            png(root / name / f"{i}.png", value=10 * c)
    return root


def folder(root, names, **kw):
    return ImageFolder(str(class_folders(root, names)), image_size=8, random_flip=False, **kw)


# ------------------------------------------------------------------ label space (issue item 4)
def test_five_class_folders_with_num_classes_3_is_a_config_error(tmp_path):
    """Was an IndexError traceback from the label embedding."""
    ds = folder(tmp_path / "d", ["a", "b", "c", "d", "e"])
    assert (ds.num_classes, ds.classes) == (5, ["a", "b", "c", "d", "e"])
    with pytest.raises(ConfigError) as err:
        check_label_space(3, ds, "image_folder")
    assert str(err.value) == ("backbone.num_classes is 3 but data 'image_folder' has 5 classes (a, b, c, d, e); "
                              "set backbone.num_classes: 5, or 1 for an unconditional model")


def test_four_class_folders_with_num_classes_3_is_a_config_error(tmp_path):
    """Was exit 0 with class 3 trained as DiT's null (unconditional) label."""
    ds = folder(tmp_path / "d", ["cat", "dog", "fox", "owl"])
    assert [ds[i][1] for i in range(len(ds))] == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ConfigError, match=r"^backbone.num_classes is 3 but data 'image_folder' has 4 classes "
                                          r"\(cat, dog, fox, owl\); set backbone.num_classes: 4"):
        check_label_space(3, ds, "image_folder")


def test_matching_label_space_passes_and_is_recorded(tmp_path):
    ds = folder(tmp_path / "d", ["n02", "n01", "n03"])
    check_label_space(3, ds, "image_folder")
    assert class_map(ds, 3) == {"num_classes": 3, "classes": ["n01", "n02", "n03"], "labels_used": True}
    assert check_label_space(10, Digits()) is None
    assert class_map(Digits(), 10)["classes"] == [str(d) for d in range(10)]


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    """Was: class2's images silently labelled 1."""
    root = class_folders(tmp_path / "d", ["class0", "class2"])
    (root / "class1").mkdir()
    with pytest.raises(DataError) as err:
        ImageFolder(str(root), image_size=8)
    assert str(err.value).startswith(f"{root / 'class1'}: class folder has no images; classes are numbered by "
                                     "sorted folder name")
    (root / "class1" / "readme.txt").write_text("only notes here")  # still no images in it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped readme.txt
        with pytest.raises(DataError, match="class1: class folder has no images"):
            ImageFolder(str(root), image_size=8)


def test_unconditional_model_ignores_labels_and_says_so(tmp_path):
    ds = folder(tmp_path / "d", ["a", "b", "c", "d", "e"])
    for num_classes in (1, None, 0):
        with pytest.warns(UserWarning, match=r"backbone.num_classes is .* \(unconditional\): the 5 classes of data "
                                             r"'image_folder' are ignored"):
            check_label_space(num_classes, ds, "image_folder")
        assert class_map(ds, num_classes)["labels_used"] is False
    unlabeled = folder(tmp_path / "u", ["a", "b"], class_cond=False)
    assert (unlabeled.num_classes, unlabeled.classes, {unlabeled[i][1] for i in range(4)}) == (1, [UNLABELED], {0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: there are no labels to ignore
        check_label_space(1, unlabeled, "image_folder")


def test_conditional_model_on_unlabeled_data_is_a_config_error(tmp_path):
    ds = folder(tmp_path / "d", ["a", "b"], class_cond=False)
    with pytest.raises(ConfigError, match=r"^backbone.num_classes is 2 \(class-conditional\) but data "
                                          r"'image_folder' has no class labels"):
        check_label_space(2, ds, "image_folder")


def test_dataset_without_declared_label_space(tmp_path):
    class Bare(torch.utils.data.Dataset):
        def __len__(self):
            return 1

    with pytest.raises(PluginError, match="Bare does not declare its label space: it needs an attribute num_classes"):
        check_label_space(4, Bare())
    check_label_space(1, Bare())  # unconditional: labels are not needed
    assert class_map(Bare(), 1) == {"num_classes": None, "classes": None, "labels_used": False}


# ------------------------------------------------------------------ layout
def test_labels_follow_the_top_level_folder_and_odd_files(tmp_path):
    root = class_folders(tmp_path / "d", ["a", "b"])
    png(root / "b" / "deeper" / "x.png", 200)  # nested: still class b
    (root / ".DS_Store").write_bytes(b"\0")  # hidden: skipped silently
    (root / ".cache").mkdir()
    png(root / ".cache" / "thumb.png")  # hidden folder: not a class
    (root / "a" / "notes.txt").write_text("hello")  # not an image by suffix: skipped with a warning
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not images by suffix \(a/notes.txt\)"):
        ds = ImageFolder(str(root), image_size=8, random_flip=False)
    assert ds.classes == ["a", "b"]
    assert [p.relative_to(root).as_posix() for p in ds.files] == ["a/0.png", "a/1.png", "b/0.png", "b/1.png",
                                                                   "b/deeper/x.png"]
    assert ds.labels == [0, 0, 1, 1, 1]


def test_image_outside_class_folders_and_no_images(tmp_path):
    root = class_folders(tmp_path / "d", ["a"])
    png(root / "loose.png")
    with pytest.raises(DataError, match=r"loose.png: image directly in data.path \(1 such\); with "
                                        r"data.class_cond: true every image goes in a class subfolder"):
        ImageFolder(str(root), image_size=8)
    assert len(ImageFolder(str(root), image_size=8, class_cond=False)) == 3
    (tmp_path / "none" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"none: no images \(.png"):
        ImageFolder(str(tmp_path / "none"), image_size=8)
    with pytest.raises(DataError, match="data.path: folder .*missing.* does not exist"):
        ImageFolder(str(tmp_path / "missing"), image_size=8)


def test_zero_byte_image_fails_when_the_dataset_is_built(tmp_path):
    root = class_folders(tmp_path / "d", ["a", "b"])
    (root / "b" / "zero.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        ImageFolder(str(root), image_size=8)
    assert str(err.value) == f"{root / 'b' / 'zero.png'}: cannot read image: empty file (0 bytes)"


# ------------------------------------------------------------------ pixels (issue item 5)
def test_items_are_decoded_by_meaning(tmp_path):
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(root / "a" / "g16.png")
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black -> white
    rgba.save(root / "a" / "rgba.png")
    ds = ImageFolder(str(root), image_size=8, random_flip=False)
    image, label = ds[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == 0
    assert torch.allclose(image, torch.full_like(image, 128 / 127.5 - 1), atol=1e-6)  # not 255 (clipped) -> 1.0
    assert torch.equal(ds[1][0], torch.ones(3, 8, 8))


def test_linked_class_folders_are_followed_and_cycles_refused(tmp_path):
    store = class_folders(tmp_path / "store", ["x", "y"])
    root = tmp_path / "d"
    root.mkdir()
    (root / "a").symlink_to(store / "x", target_is_directory=True)
    (root / "b").symlink_to(store / "x", target_is_directory=True)  # the same real folder twice: two classes
    (root / "c").symlink_to(store / "y", target_is_directory=True)
    ds = ImageFolder(str(root), image_size=8)
    assert ds.classes == ["a", "b", "c"] and ds.labels == [0, 0, 1, 1, 2, 2]
    (store / "y" / "loop").symlink_to(store / "y", target_is_directory=True)
    with pytest.raises(DataError, match=r"c/loop: links back to a folder that contains it \(a cycle\)"):
        ImageFolder(str(root), image_size=8)


def test_heldout_split_keeps_every_label_with_its_file(tmp_path):
    root = tmp_path / "d"
    for i in range(30):
        png(root / ("a", "b", "c")[i % 3] / f"{i:03d}.png", i)
    parts = [ImageFolder(str(root), 8, split=s, heldout_fraction=0.4) for s in ("train", "heldout")]
    assert sum(len(p) for p in parts) == 30 and all(len(p) for p in parts)
    for part in parts:
        assert part.classes == ["a", "b", "c"] and part.num_classes == 3
        assert part.labels == [part.class_index[f.relative_to(root).parts[0]] for f in part.files]


def test_content_key_names_the_folder_not_how_it_was_written(tmp_path, monkeypatch):
    """A latent cache is keyed by what the params model says identifies its images (``SupportsContentKey``):
    ``./data`` and its absolute path are one folder, so one cache."""
    from dtr_plugins.core.contracts import SupportsContentKey
    from dtr_plugins.data.image_folder import ImageFolderParams

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = ImageFolderParams(path="data", image_size=8)
    absolute = ImageFolderParams(path=str(tmp_path / "data"), image_size=8)
    assert isinstance(relative, SupportsContentKey)
    assert relative.content_key() == absolute.content_key()
    assert relative.content_key()["path"] == str((tmp_path / "data").resolve())
    assert relative.content_key() != ImageFolderParams(path="data", image_size=16).content_key()


def test_a_folder_with_nothing_held_out_trains_without_heldout_loss_and_says_why(tmp_path):
    """heldout_fraction 0 (the default) holds no images out: the run measures no held-out loss and records why,
    instead of being refused for an empty held-out split; a fraction above 0 opens the split with the data."""
    from dtr_plugins.compose import compose, heldout_dataset_params
    from dtr_plugins.core.config import config_from_dict
    from dtr_plugins.data.image_folder import ImageFolderParams

    root = tmp_path / "d"
    for i in range(30):
        png(root / ("a", "b")[i % 2] / f"{i:03d}.png", i)
    assert ImageFolderParams(path=str(root), image_size=8).heldout_split() is None
    with pytest.raises(ConfigError, match=r"^data: dataset 'image_folder' holds no images out .*heldout_fraction"):
        heldout_dataset_params("image_folder", ImageFolderParams, {"path": str(root), "image_size": 8})

    def run(fraction):
        return compose(config_from_dict({
            "name": "f", "backbone": {"name": "dit", "input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 2,
                                      "num_heads": 2, "in_channels": 3, "num_classes": 2},
            "data": {"name": "image_folder", "path": str(root), "image_size": 8, "heldout_fraction": fraction},
            "eval": {"heldout_every": 5}}), device="meta")

    nothing = run(0.0)
    assert nothing.heldout_data is None and "holds no images out" in nothing.heldout_why
    some = run(0.4)
    assert some.heldout_why == "" and 0 < len(some.heldout_data) < 30
    assert len(some.dataset) + len(some.heldout_data) == 30
