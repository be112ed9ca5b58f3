"""Image decoding (core/decode.py): every Pillow mode to the right 8-bit RGB values, or one line naming the file."""
import numpy as np
import pytest
import torch
from PIL import Image

from dtr_plugins.core.decode import read_rgb_array, to_rgb
from dtr_plugins.core.errors import DataError
from dtr_plugins.evaluation.inputs import load_images


def saved(tmp_path, img, name, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def decoded(path, mode=None):
    if mode is not None:
        with Image.open(path) as img:
            assert img.mode == mode  # the file really opens in the mode under test
    return read_rgb_array(path)


def gray(arr):
    """A decoded image whose three channels are equal, as its one channel."""
    assert arr.dtype == np.uint8 and arr.shape[-1] == 3
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0]


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128, 257, 32768, 65535]], np.uint16)
    path = saved(tmp_path, Image.fromarray(values), "g16.png")
    with Image.open(path) as img:  # the fault: Pillow's own conversion saturates at 255
        assert np.asarray(img.convert("RGB"))[0, :, 0].tolist() == [0, 128, 255, 255, 255]
    assert gray(decoded(path, "I;16"))[0].tolist() == [0, 0, 1, 128, 255]


def test_16bit_big_endian(tmp_path):
    values = np.array([[0, 32768, 65535]], ">u2")
    img = Image.frombuffer("I;16B", (3, 1), values.tobytes(), "raw", "I;16B", 0, 1)
    assert gray(np.asarray(to_rgb(img, "x")))[0].tolist() == [0, 128, 255]


def test_32bit_integer_read_on_the_16bit_scale(tmp_path):
    path = saved(tmp_path, Image.fromarray(np.array([[0, 32768, 65535, 255]], np.int32)), "i32.tif")
    assert gray(decoded(path, "I"))[0].tolist() == [0, 128, 255, 1]
    for bad in (70000, -5):
        path = saved(tmp_path, Image.fromarray(np.array([[0, bad]], np.int32)), f"bad{bad}.tif")
        with pytest.raises(DataError) as err:
            decoded(path)
        assert str(err.value).startswith(f"{path}: I image has values ") and "0..65535" in str(err.value)


def test_float_image_read_on_the_scale_0_1(tmp_path):
    path = saved(tmp_path, Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)), "f.tif")
    with Image.open(path) as img:  # the fault: Pillow reads floats on the 0..255 scale and clips
        assert np.asarray(img.convert("RGB"))[0, :, 0].tolist() == [0, 0, 0, 1]
    assert gray(decoded(path, "F"))[0].tolist() == [0, 64, 128, 255]
    for name, bad in (("big", 2.0), ("neg", -0.5), ("nan", float("nan"))):
        path = saved(tmp_path, Image.fromarray(np.array([[0.5, bad]], np.float32)), f"{name}.tif")
        with pytest.raises(DataError) as err:
            decoded(path)
        assert str(err.value).startswith(f"{path}: float (F) image has values") and "[0, 1]" in str(err.value)


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30])
    for x, index in enumerate([0, 1, 2]):
        img.putpixel((x, 0), index)
    plain = decoded(saved(tmp_path, img, "p.png"), "P")
    assert plain[0].tolist() == [[255, 0, 0], [0, 0, 255], [10, 20, 30]]
    keyed = decoded(saved(tmp_path, img, "pt.png", transparency=1), "P")
    assert keyed[0].tolist() == [[255, 0, 0], [255, 255, 255], [10, 20, 30]]  # transparent entry -> white
    gif = decoded(saved(tmp_path, img, "pt.gif", transparency=1), "P")
    assert gif[0].tolist() == [[255, 0, 0], [255, 255, 255], [10, 20, 30]]


def test_alpha_is_composited_on_white(tmp_path):
    la = Image.new("LA", (4, 1))
    for x, px in enumerate([(100, 255), (100, 0), (0, 128), (200, 128)]):
        la.putpixel((x, 0), px)
    assert gray(decoded(saved(tmp_path, la, "la.png"), "LA"))[0].tolist() == [100, 255, 127, 227]
    rgba = Image.new("RGBA", (3, 1))
    for x, px in enumerate([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 128)]):
        rgba.putpixel((x, 0), px)
    assert decoded(saved(tmp_path, rgba, "rgba.png"), "RGBA")[0].tolist() == [[255, 0, 0], [255, 255, 255],
                                                                           [127, 127, 127]]


def test_transparency_key_of_gray_and_rgb_png(tmp_path):
    g = Image.fromarray(np.array([[7, 8]], np.uint8))
    assert gray(decoded(saved(tmp_path, g, "lt.png", transparency=7), "L"))[0].tolist() == [255, 8]
    rgb = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8))
    assert decoded(saved(tmp_path, rgb, "rt.png", transparency=(1, 2, 3)), "RGB")[0].tolist() == [[255, 255, 255],
                                                                                               [4, 5, 6]]


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (4, 1))
    for x, px in enumerate([(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 0, 128)]):
        img.putpixel((x, 0), px)
    out = decoded(saved(tmp_path, img, "c.tif"), "CMYK")
    assert out[0].tolist() == [[255, 255, 255], [0, 255, 255], [255, 0, 255], [127, 127, 127]]


def test_gray_bilevel_rgb_and_ycbcr(tmp_path):
    assert gray(decoded(saved(tmp_path, Image.fromarray(np.array([[0, 7, 200]], np.uint8)), "l.png"), "L"))[0] \
        .tolist() == [0, 7, 200]
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    assert gray(decoded(saved(tmp_path, bits, "b.png"), "1"))[0].tolist() == [0, 255]
    rgb = np.array([[[1, 2, 3], [250, 128, 0]]], np.uint8)
    assert decoded(saved(tmp_path, Image.fromarray(rgb), "rgb.png"), "RGB").tolist() == rgb.tolist()
    ycc = Image.new("YCbCr", (3, 1))
    for x, px in enumerate([(128, 128, 128), (255, 128, 128), (76, 85, 255)]):
        ycc.putpixel((x, 0), px)
    out = decoded(saved(tmp_path, ycc, "y.tif"), "YCbCr").astype(int)
    assert out[0, 0].tolist() == [128, 128, 128] and out[0, 1].tolist() == [255, 255, 255]
    assert np.abs(out[0, 2] - [255, 0, 0]).max() <= 1  # JFIF red


def test_unsupported_mode_is_one_line():
    with pytest.raises(DataError, match=r"^pic.x: image mode 'HSV' is not supported \(supported: 1, L, P"):
        to_rgb(Image.new("HSV", (2, 2)), "pic.x")


def test_broken_files_are_one_line_naming_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    whole = saved(tmp_path, big, "whole.png").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole[:len(whole) // 2])
    jpeg = saved(tmp_path, big, "whole.jpg").read_bytes()
    cut_jpg = tmp_path / "cut.jpg"
    cut_jpg.write_bytes(jpeg[:len(jpeg) // 3])
    cases = [(empty, "cannot read image: empty file (0 bytes)"),
             (text, "cannot read image: not a format Pillow knows, or corrupt"),
             (cut, "cannot read image: truncated or corrupt ("),
             (cut_jpg, "cannot read image: truncated or corrupt (")]
    for path, why in cases:
        with pytest.raises(DataError) as err:
            read_rgb_array(path)
        message = str(err.value)
        assert message.startswith(f"{path}: {why}") and "\n" not in message


def test_evaluation_folders_use_the_same_decoder(tmp_path):
    """A folder of 16-bit PNGs is served to the feature extractor as 128, not as 255 (the clipped value)."""
    (tmp_path / "s").mkdir()
    for i in range(2):
        saved(tmp_path / "s", Image.fromarray(np.full((4, 4), 32768, np.uint16)), f"{i}.png")
    images = load_images(tmp_path / "s")
    assert torch.equal(images.dataset[0], torch.full((3, 4, 4), 128, dtype=torch.uint8))
    (tmp_path / "s" / "2.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"2\.png: cannot read image: empty file \(0 bytes\)"):
        load_images(tmp_path / "s")
