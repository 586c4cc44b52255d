"""Image loading and the shared preprocessing: every odd image a user may feed us."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edge_classifier.errors import ImageError
from edge_classifier.frames.images import load_image, preprocess


def test_load_gives_rgb_uint8(sample):
    image = load_image(sample("parrot.jpg"))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"nope.jpg: no such file"):
        load_image(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageError, match=r"notes.jpg: not an image"):
        load_image(path)


def test_truncated_jpeg(tmp_path, sample):
    data = sample("parrot.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"cut.jpg: cannot decode image"):
        load_image(path)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F"])
def test_every_pil_mode_becomes_rgb(tmp_path, sample, mode):
    rgb = Image.open(sample("cat.bmp")).convert("RGB").resize((64, 48))
    if mode == "I;16":
        converted = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    elif mode in ("I", "F"):
        converted = rgb.convert("L").convert(mode)
    else:
        converted = rgb.convert(mode)
    suffix = ".tif" if mode in ("I", "F", "CMYK") else ".png"
    path = tmp_path / f"img{suffix}"
    converted.save(path)
    out = load_image(path)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    if mode in ("L", "I;16", "I", "F"):
        gray = np.asarray(rgb.convert("L"))
        assert np.abs(out[..., 0].astype(int) - gray).max() <= 1  # scaled, not clipped


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 300, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert load_image(path)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert (load_image(path) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif)
    assert load_image(path).shape == (40, 20, 3)


def test_crop_and_squash_sizes():
    frame = np.zeros((240, 320, 3), dtype=np.uint8)
    assert preprocess(frame, (224, 224), "crop").shape == (224, 224, 3)
    assert preprocess(frame, (128, 160), "squash").shape == (128, 160, 3)


def test_crop_keeps_the_centre_and_squash_keeps_everything():
    frame = np.zeros((100, 300, 3), dtype=np.uint8)
    frame[:, :100] = 255  # a white left third
    cropped = preprocess(frame, (50, 50), "crop")
    squashed = preprocess(frame, (50, 50), "squash")
    assert cropped.max() == 0  # the centre square has no white
    assert squashed[:, :10].min() == 255


def test_preprocess_rejects_a_bad_frame():
    with pytest.raises(ImageError, match="HxWx3 uint8"):
        preprocess(np.zeros((10, 10), dtype=np.float32), (8, 8))
    with pytest.raises(ValueError, match="resize mode"):
        preprocess(np.zeros((10, 10, 3), dtype=np.uint8), (8, 8), "stretch")


def test_preprocess_does_not_modify_its_input():
    frame = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    before = frame.copy()
    out = preprocess(frame, (224, 224))
    out[:] = 0
    np.testing.assert_array_equal(frame, before)
