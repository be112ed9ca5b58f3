"""Caption data: coco_captions on a small COCO-format folder made here, image_text, the offline class-caption sets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dtr_plugins.core.contracts import SupportsCaptions, SupportsImageShape
from dtr_plugins.core.errors import ConfigError, DataError
from dtr_plugins.core.plugins import default_registry


def coco_folder(root, *, broken: bool = False):
    images = root / "train2014"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for image_id, (w, h) in zip((42, 7, 13), ((40, 30), (24, 36), (32, 32))):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
        entries.append({"id": image_id, "file_name": name, "width": w, "height": h})
    entries.append({"id": 99, "file_name": "no_captions.jpg"})  # an image without captions is left out
    anns = [{"image_id": 42, "id": 3, "caption": "a dog on grass "}, {"image_id": 7, "id": 9, "caption": "a red bus"},
            {"image_id": 42, "id": 1, "caption": "A brown dog."}, {"image_id": 13, "id": 2, "caption": "two cats"},
            {"image_id": 7, "id": 4, "caption": "a bus in the city"}]
    if broken:
        anns.append({"image_id": 5, "id": 11, "caption": "no such image"})
    ann = root / "annotations" / "captions_train2014.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": entries, "annotations": anns}))
    return images, ann


def params_of(name, **params):
    return default_registry().get("dataset", name).validate(params, where="data")


def build(name, **params):
    info = default_registry().get("dataset", name)
    validated = info.validate(params, where="data")
    return validated, info.build(**params)


def test_coco_captions_reads_images_in_id_order_with_their_captions(tmp_path):
    images, ann = coco_folder(tmp_path)
    params, data = build("coco_captions", images=str(images), annotations=str(ann), image_size=16)
    assert isinstance(params, SupportsCaptions) and isinstance(params, SupportsImageShape)
    assert params.image_shape() == (3, 16, 16) and data.num_classes == 1
    # images 7, 13, 42; captions in annotation id order, stripped
    assert params.caption_sets() == [["a bus in the city", "a red bus"], ["two cats"],
                                     ["A brown dog.", "a dog on grass"]]
    assert len(data) == 3
    image, label = data[2]
    assert image.shape == (3, 16, 16) and label == 2 and -1 <= float(image.min()) <= float(image.max()) <= 1
    # the centred square of the 40x30 image 42, resized with LANCZOS
    src = Image.open(images / "COCO_train2014_000000000042.jpg").convert("RGB").crop((5, 0, 35, 30))
    expected = np.asarray(src.resize((16, 16), Image.Resampling.LANCZOS)).astype(np.float32) / 127.5 - 1
    assert torch.allclose(image.permute(1, 2, 0), torch.from_numpy(expected))
    _, limited = build("coco_captions", images=str(images), annotations=str(ann), image_size=16, limit=2)
    assert len(limited) == 2


def test_coco_mistakes_are_one_data_error(tmp_path):
    images, ann = coco_folder(tmp_path / "a", broken=True)
    params = params_of("coco_captions", images=str(images), annotations=str(ann), image_size=16)
    with pytest.raises(DataError, match="image_id 5, which is not in images"):
        params.caption_sets()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    params = params_of("coco_captions", images=str(images), annotations=str(bad), image_size=16)
    with pytest.raises(DataError, match="bad.json: not a COCO captions file"):
        params.caption_sets()
    images, ann = coco_folder(tmp_path / "b")
    (images / "COCO_train2014_000000000013.jpg").unlink()
    _, data = build("coco_captions", images=str(images), annotations=str(ann), image_size=16)
    with pytest.raises(DataError, match="COCO_train2014_000000000013.jpg"):
        data[1]
    with pytest.raises(ConfigError, match="data.image_size"):
        build("coco_captions", images=str(images), annotations=str(ann), image_size=4)


def test_image_text_folder(tmp_path):
    for name in ("a.png", "sub/b.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / name)
    lines = [{"file": "sub/b.png", "text": "a red square"}, {"file": "a.png", "captions": ["red", "crimson"]},
             {"file": "sub/b.png", "text": "scarlet"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    params, data = build("image_text", path=str(tmp_path), image_size=8)
    assert params.caption_sets() == [["a red square", "scarlet"], ["red", "crimson"]]
    image, label = data[1]
    assert label == 1 and torch.allclose(image[0], torch.ones(8, 8)) and torch.allclose(image[1], -torch.ones(8, 8))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "../x.png", "text": "t"}) + "\n")
    params = params_of("image_text", path=str(tmp_path / "."), image_size=8, captions_file="captions.jsonl")
    with pytest.raises(DataError, match="captions.jsonl:1: file '../x.png' must be a relative path"):
        params.caption_sets()


def test_class_caption_sets():
    params, data = build("digits_captions", templates=["a {name}", "the digit {name}"])
    sets = params.caption_sets()
    assert len(sets) == len(data) and data.num_classes == 1 and data[5][1] == 5
    assert sets[0] == ["a zero", "the digit zero"]  # the first training digit is a 0
    assert params.caption_classes()["the digit seven"] == 7
    with pytest.raises(ConfigError, match="data.templates"):
        build("digits_captions", templates=["no name here"])
    info = default_registry().get("dataset", "fashion_captions")
    fashion = info.validate({}, where="data")
    assert fashion.class_captions()[7][0] == "a photo of a sneaker"
