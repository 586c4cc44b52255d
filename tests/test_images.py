"""Image loading and the shared preprocessing: every odd image a user may feed us."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from edge_classifier.errors import ImageError
from edge_classifier.frames.images import (DEFAULT_MAX_PIXELS, load_image, needed_short_side,
                                           preprocess, shrink)

HUGE = 9000  # a 9000x9000 photo: 81 megapixels, under Pillow's bomb limit; 243 MB as RGB
MB = 1 << 20


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_solid_png(path, width, height, rgb=(120, 30, 200), rows=None):
    """An RGB PNG streamed row by row (the test never holds it decoded). ``rows``: write only
    that many rows of pixel data, a truncated file whose header still says ``height``."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(rgb) * width
    data = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    data.append(compressor.flush(zlib.Z_FINISH if rows is None else zlib.Z_SYNC_FLUSH))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(png_chunk(b"IDAT", b"".join(data)))
        if rows is None:
            f.write(png_chunk(b"IEND", b""))
    return path


def load_in_subprocess(path, **kwargs):
    """load_image(path, **kwargs) in a fresh interpreter: its outcome and how far its peak
    resident memory rose above the interpreter's with everything imported (bytes)."""
    script = textwrap.dedent(f"""
        import json, resource, sys
        from edge_classifier.errors import ImageError
        from edge_classifier.frames.images import load_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            shape, error = list(load_image(sys.argv[1], **{kwargs!r}).shape), None
        except ImageError as exc:
            shape, error = None, str(exc)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        print(json.dumps({{"shape": shape, "error": error, "grown": grown}}))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    return write_solid_png(tmp_path_factory.mktemp("huge") / "huge.png", HUGE, HUGE)


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; Image.new('RGB', "
                    f"({HUGE}, {HUGE}), (120, 30, 200)).save(sys.argv[1], quality=90)",
                    str(path)], check=True)
    return path


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
    out = preprocess(frame, (224, 224))  # already the size: a read-only view, no copy
    with pytest.raises(ValueError):
        out[:] = 0
    np.testing.assert_array_equal(frame, before)


# --- bounded decoding ---------------------------------------------------------------------------
def test_huge_image_is_refused_from_its_header_without_decoding(huge_png):
    # The old load_image decoded all 81 megapixels: peak memory grew by ~780 MB.
    result = load_in_subprocess(huge_png)
    assert result["shape"] is None
    assert "huge.png: image too large: 9000x9000 pixels (81 megapixels" in result["error"]
    assert result["grown"] < 64 * MB


def test_size_hint_decodes_a_huge_jpeg_by_dct_scaling(huge_jpeg):
    result = load_in_subprocess(huge_jpeg, size_hint=(224, 224), max_pixels=10 ** 8)
    assert result["error"] is None
    height, width, _ = result["shape"]
    assert 448 <= min(height, width) < 1200  # 1/8 in the decoder, then halved
    assert result["grown"] < 64 * MB  # the full decode alone would be 243 MB


def test_size_hint_holds_a_huge_png_at_one_decode(huge_png):
    # PNG cannot decode scaled: one full decode (243 MB) is the floor; a full-size frame costs
    # at least twice that (the image and its array).
    result = load_in_subprocess(huge_png, size_hint=(224, 224), max_pixels=10 ** 8)
    assert result["error"] is None
    assert 448 <= min(result["shape"][:2]) < 900
    assert result["grown"] < 1.75 * HUGE * HUGE * 3


def test_truncated_file_with_a_huge_header_is_refused_before_decoding(tmp_path):
    # The old load_image started decoding it and reported truncation, not the size.
    path = write_solid_png(tmp_path / "claims.png", HUGE, HUGE, rows=10)
    with pytest.raises(ImageError, match=r"claims.png: image too large: 9000x9000 pixels"):
        load_image(path)


def test_header_beyond_pillows_own_limit_is_the_same_clear_error(tmp_path):
    path = write_solid_png(tmp_path / "bomb.png", 30000, 20000, rows=1)
    with pytest.raises(ImageError, match=r"bomb.png: image too large: 600 megapixels, more "
                                         r"than Pillow's limit of 179; shrink it first$"):
        load_image(path)


def test_truncated_png_under_the_limit_is_one_clear_error(tmp_path):
    path = write_solid_png(tmp_path / "cut.png", 300, 200, rows=50)
    with pytest.raises(ImageError, match=r"cut.png: cannot decode image") as caught:
        load_image(path)
    assert "\n" not in str(caught.value)


def test_max_pixels_is_configurable(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(path)
    with pytest.raises(ImageError, match=r"40x30 pixels .*limit of 0.001\)"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=1200).shape == (30, 40, 3)
    assert DEFAULT_MAX_PIXELS >= 8160 * 6120  # a 50-megapixel phone photo still loads


def test_size_hint_leaves_small_images_untouched(sample):
    path = sample("parrot.jpg")  # 512 px wide: already under twice 224 + a factor of 2
    np.testing.assert_array_equal(load_image(path, size_hint=(224, 224)), load_image(path))


@pytest.mark.parametrize("hint,side", [(None, 0), (224, 448), ((224, 224), 448),
                                       ((128, 160), 320)])
def test_needed_short_side(hint, side):
    assert needed_short_side(hint) == side


@pytest.mark.parametrize("hint", [0, -3, (224,), (224, 0), "224", 2.5])
def test_bad_size_hint_is_a_value_error(hint):
    with pytest.raises(ValueError, match="size_hint"):
        needed_short_side(hint)


GOLDEN = [("cat.bmp", "Egyptian cat"), ("parrot.jpg", "macaw"),
          ("grace_hopper.bmp", "military uniform")]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("image,label", GOLDEN)
def test_size_hint_keeps_the_golden_labels_of_big_photos(tmp_path, backbones, sample, image,
                                                         label, suffix):
    original = Image.open(sample(image)).convert("RGB")
    big = original.resize((original.width * 4, original.height * 4), Image.BICUBIC)
    path = tmp_path / f"big{suffix}"
    big.save(path, quality=95, compress_level=1)  # JPEG takes the one, PNG the other
    full = load_image(path)
    for resize in ("crop", "squash"):
        backbone = backbones("mobilenet_v2_1.0_224_quant", resize)
        hinted = load_image(path, size_hint=backbone.input_size)
        assert 448 <= min(hinted.shape[:2]) < min(full.shape[:2])
        (top, _), = backbone.top_k(backbone.run(hinted).scores, 1)
        assert top == label
        a, b = backbone.embed(full), backbone.embed(hinted)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99


def test_shrinking_a_palette_image_averages_colours_not_indices():
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = np.zeros((1000, 1000), dtype=np.uint8)
    indices[:, 1::2] = 2  # red and blue columns; averaging the indices would give green
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    small = np.asarray(shrink(image, 100))
    assert small.shape == (100, 100, 3)
    assert small[..., 1].max() == 0 and small[..., 0].min() > 100 and small[..., 2].min() > 100


def test_shrinking_sixteen_bit_grayscale_keeps_its_levels(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((1000, 1000), 32768, dtype=np.uint16)).save(path)
    out = load_image(path, size_hint=100)
    assert out.shape == (200, 200, 3) and (out == 128).all()


def test_exif_orientation_is_applied_to_a_shrunk_photo(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (4000, 2000), (255, 0, 0)).save(path, exif=exif)
    height, width, _ = load_image(path, size_hint=224).shape
    assert height == 2 * width and width >= 448


# --- untrusted files ----------------------------------------------------------------------------
def test_corrupt_exif_loses_the_orientation_not_the_picture_and_stays_quiet(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "odd.jpg"
    Image.new("RGB", (40, 20), (255, 0, 0)).save(path, exif=exif.tobytes()[:20])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "Corrupt EXIF data" must not escape
        assert load_image(path).shape == (20, 40, 3)


def test_nan_and_infinite_float_samples_become_black_and_white(tmp_path):
    values = np.array([[np.nan, np.inf, -np.inf, 0.5]], dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values, "F").save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        out = load_image(path)
    assert out[0, :, 0].tolist() == [0, 255, 0, 0]


def test_postscript_is_not_decoded_even_named_jpg(tmp_path):
    path = tmp_path / "doc.jpg"  # Pillow would hand EPS to Ghostscript
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match=r"doc.jpg: not an image"):
        load_image(path)


def test_zero_sized_or_unreadable_files_are_one_clear_error(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: not an image"):
        load_image(empty)
    header_only = tmp_path / "header.png"  # signature and IHDR, then nothing
    header_only.write_bytes(write_solid_png(tmp_path / "x.png", 10, 10).read_bytes()[:33])
    with pytest.raises(ImageError, match="header.png: not an image .*cut off in its header"):
        load_image(header_only)
