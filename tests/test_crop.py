"""``source.crop``, the region of interest: checked at load with clear errors, applied to the
source's frames (the camera's ISP through ScalerCrop, other sources on the CPU), and part of the
state's identity (a state taught on one crop refuses another, losing nothing)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from devicekit import make_config
from picamera2_standin import FIELD_OF_VIEW, Picamera2
from test_cli_errors import run

from edge_classifier.config import Config, SourceConfig, parse_config, validate_config
from edge_classifier.config.example import example_text
from edge_classifier.device.loop import Device
from edge_classifier.errors import ConfigError, StoreError
from edge_classifier.frames.images import load_image, preprocess
from edge_classifier.frames.region import scaler_crop
from edge_classifier.frames.sources import PicameraSource, ReplaySource, make_source
from edge_classifier.learning.state import StateDir

RIGHT, LEFT = (0.5, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 1.0)


@pytest.mark.parametrize("value, message", [
    ("[0.5, 0, 1]", "source.crop: expected four numbers"),
    ("[0.5, 0, 1, 1.5]", "source.crop: y1 must be between 0 and 1"),
    ("[-0.1, 0, 1, 1]", "source.crop: x0 must be between 0 and 1"),
    ("[0.6, 0, 0.4, 1]", "source.crop: x1 (0.4) must be greater than x0 (0.6)"),
    ("[0, 0.5, 1, 0.5]", "source.crop: y1 (0.5) must be greater than y0 (0.5)"),
    ("['a', 0, 1, 1]", "source.crop[0]: expected a number"),
    ("0.5", "source.crop: expected a list of numbers"),
    ("[true, 0, 1, 1]", "source.crop[0]: expected a number"),
])
def test_a_bad_crop_is_refused_at_load_naming_the_key(value, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[source]\ncrop = {value}\n")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_crop_loads_as_four_fractions_and_the_example_shows_the_key():
    assert parse_config("[source]\ncrop = [0.5, 0, 1, 1]\n").source.crop == RIGHT
    assert parse_config("").source.crop == ()
    assert "crop = []" in example_text()
    parse_config(example_text())  # the example itself loads


@pytest.mark.parametrize("text, message", [
    ("width = 8\nheight = 240", "source.width: 0 (the model's input size) or at least 16"),
    ("width = 320", "source.width, source.height: set both"),
])
def test_a_lores_size_must_be_both_set_or_both_the_models(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(f"[source]\n{text}\n")


def test_a_crop_made_in_code_is_checked_too():
    with pytest.raises(ConfigError, match="source.crop: x1"):
        validate_config(Config(source=SourceConfig(crop=(0.9, 0.0, 0.1, 1.0))))


# --- the crop is applied ------------------------------------------------------------------------
@pytest.fixture
def halves(tmp_path, sample):
    """A 448x224 picture: the left half a cat, the right half a bird (each 224x224)."""
    from PIL import Image
    cat = preprocess(load_image(sample("cat.bmp")), (224, 224), "crop")
    bird = preprocess(load_image(sample("bird.bmp")), (224, 224), "crop")
    path = tmp_path / "halves.png"
    Image.fromarray(np.concatenate([cat, bird], axis=1)).save(path)
    return path, cat, bird


@pytest.mark.parametrize("crop, expected", [(LEFT, "cat"), (RIGHT, "bird")])
def test_only_the_cropped_half_of_the_frame_is_classified(tmp_path, backbones, halves, crop,
                                                           expected):
    path, cat, bird = halves
    config = make_config()
    config = Config(**{**config.__dict__, "source": SourceConfig(kind="replay", path=str(path),
                                                                 crop=crop)})
    with Device(config, backbone=backbones(), state_dir=tmp_path / "state") as device:
        # Taught with pictures of the region, used whole:
        device.learner.capture("cat", cat)
        device.learner.capture("bird", bird)
        frame = device.source.read()
        assert frame.shape == (224, 224, 3)  # the source delivers the region only
        device.step(frame)
        assert device.last_prediction.best == expected
        assert device.backbone.identity["crop"] == list(crop)


def test_a_replay_without_a_crop_gives_the_whole_picture(halves):
    with ReplaySource(halves[0]) as source:
        assert source.read().shape == (224, 448, 3)


# --- the crop is part of the state's identity ---------------------------------------------------
def _device(tmp_path, backbones, crop, sample):
    config = Config(**{**make_config().__dict__,
                       "source": SourceConfig(kind="replay", path=str(sample("cat.bmp")),
                                              crop=crop)})
    return Device(config, backbone=backbones(), state_dir=tmp_path / "state")


@pytest.mark.parametrize("first, second, said", [
    (RIGHT, LEFT, "taught on source.crop = [0.5, 0, 1, 1], not source.crop = [0, 0, 0.5, 1]"),
    (None, RIGHT, "taught on the whole frame (no source.crop), not source.crop = [0.5, 0, 1, 1]"),
    (RIGHT, None, "taught on source.crop = [0.5, 0, 1, 1], not the whole frame"),
])
def test_a_state_taught_on_one_crop_refuses_another_and_loses_nothing(tmp_path, backbones,
                                                                      sample, first, second,
                                                                      said):
    with _device(tmp_path, backbones, first or (), sample) as device:
        device.learner.capture("cat", device.source.read())
        device.learner.save()
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "state").rglob("*")
                   if p.is_file() and p.name != "lock")
    with pytest.raises(StoreError) as caught:
        _device(tmp_path, backbones, second or (), sample)
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "state").rglob("*")
                   if p.is_file() and p.name != "lock")
    assert after == files
    with _device(tmp_path, backbones, first or (), sample) as again:  # the same crop still works
        assert again.store.counts() == {"bird": 0, "cat": 1}


def test_a_state_whose_samples_were_all_deleted_takes_a_new_crop(tmp_path, backbones, sample):
    with _device(tmp_path, backbones, RIGHT, sample) as device:
        device.learner.capture("cat", device.source.read())
        device.learner.save()
        device.store.clear_class("cat")  # an explicit user action: nothing of RIGHT is left
        device.learner.changed()
        device.learner.save()
    with _device(tmp_path, backbones, LEFT, sample) as device:  # no refusal: nothing to mix
        assert any("none is left, so it now takes samples of this one" in p
                   for p in device.store.problems)
        assert device.store.counts() == {"bird": 0, "cat": 0}  # the classes stay
        device.learner.capture("cat", device.source.read())
        assert device.learner.predict_embedding(
            device.backbone.embed(device.source.read())).label in ("cat", "unknown")
    assert StateDir(tmp_path / "state").crop() == list(LEFT)
    with pytest.raises(StoreError, match="taught on source.crop = \\[0, 0, 0.5, 1\\]"):
        _device(tmp_path, backbones, RIGHT, sample)  # now a LEFT sample exists: refused again


def test_a_state_whose_samples_were_all_deleted_takes_another_model(tmp_path, backbones,
                                                                     sample):
    config = Config(**{**make_config().__dict__,
                       "source": SourceConfig(kind="replay", path=str(sample("cat.bmp")))})
    with Device(config, backbone=backbones(), state_dir=tmp_path / "state") as device:
        device.learner.capture("cat", device.source.read())
        device.learner.capture("bird", device.source.read())
        device.learner.save()  # a head of 1024-wide embeddings
        device.store.delete_class("cat")
        device.store.clear_class("bird")
        device.learner.changed()
        device.learner.save()
    v2 = backbones("mobilenet_v2_1.0_224_quant")
    with Device(config, backbone=v2, state_dir=tmp_path / "state") as device:
        device.learner.capture("bird", device.source.read())  # 1280-wide: no mix, no error
        assert device.store.counts()["bird"] == 1
        assert device.learner.head.dim == 1280


def test_commands_on_pictures_use_the_states_crop(tmp_path, backbones, sample, capsys):
    state = tmp_path / "state"
    with _device(tmp_path, backbones, RIGHT, sample) as device:
        device.learner.capture("cat", device.source.read())
        device.learner.capture("bird", load_image(sample("bird.bmp")))
        device.learner.save()
    assert StateDir(state, write=False).crop() == list(RIGHT)
    code, out, err = run(capsys, "predict", sample("bird.bmp"), "--state", state, "--json")
    assert code == 0, err
    assert json.loads(out)["results"][0]["label"] == "bird"
    with StateDir(state, write=False) as read_only:  # a whole-frame backbone is refused
        with pytest.raises(StoreError, match="source.crop"):
            read_only.open_store(backbones().identity)


# --- the camera: the ISP crops and scales -------------------------------------------------------
def _only(frame, colour) -> bool:
    """Every pixel is ``colour``, give or take YUV 4:2:0 chroma and the scaler at the edges."""
    return int(np.abs(frame.astype(int) - colour).max()) <= 24


def _two_colours(width, height, n):
    """Left half red, right half blue."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[:, : width // 2] = (255, 0, 0)
    rgb[:, width // 2:] = (0, 0, 255)
    return rgb


@pytest.mark.parametrize("platform", ["VC4", "PISP"])
def test_the_camera_streams_the_models_input_size_with_the_crop_as_scaler_crop(platform):
    cameras = []

    def factory():
        cameras.append(Picamera2(scene=_two_colours, platform=platform))
        return cameras[-1]
    config = SourceConfig(kind="picamera2", crop=RIGHT)
    with make_source(config, size_hint=(224, 224), resize="crop",
                     picamera2_factory=factory) as source:
        frame = source.read()
    camera = cameras[0]
    assert camera.camera_config["lores"]["size"] == (224, 224)
    # The right half of the field of view, then its centred square.
    fx, fy, fw, fh = FIELD_OF_VIEW
    side = min(fw // 2, fh)  # the right half is 1152x1296: its centred square is 1152 wide
    expected = (fw // 2 + (fw // 2 - side) // 2, (fh - side) // 2, side, side)
    assert source.scaler_crop == expected
    control = "ScalerCrops" if platform == "PISP" else "ScalerCrop"
    sent = camera.controls[control]
    assert (sent[1] if platform == "PISP" else sent) == expected
    assert camera.calls.index("set_controls") < camera.calls.index("start")
    assert frame.shape == (224, 224, 3)
    assert _only(frame, (0, 0, 255))  # only blue: the right half


def test_the_isp_sized_frame_matches_the_cpu_path():
    rect = scaler_crop(FIELD_OF_VIEW, LEFT, (224, 224), "crop")
    with PicameraSource(224, 224, picamera2_factory=lambda: Picamera2(scene=_two_colours),
                        crop=LEFT, resize="crop") as isp:
        by_isp = isp.read()
    assert isp.scaler_crop == rect and isp.crop_applied
    assert _only(by_isp, (255, 0, 0))
    with PicameraSource(320, 240, picamera2_factory=lambda: Picamera2(scene=_two_colours),
                        crop=LEFT) as cpu:
        region = cpu.read()
    assert not cpu.crop_applied and cpu.scaler_crop is None
    assert region.shape == (240, 160, 3)
    assert _only(preprocess(region, (224, 224), "crop"), (255, 0, 0))


def test_squash_asks_the_isp_for_the_whole_crop():
    assert scaler_crop((0, 0, 2000, 1000), (0.5, 0.0, 1.0, 1.0), (224, 224), "squash") == \
        (1000, 0, 1000, 1000)
    assert scaler_crop((0, 0, 2000, 1000), None, (224, 224), "crop") == (500, 0, 1000, 1000)
    assert scaler_crop((8, 4, 2000, 1000), None, (224, 448), "squash") == (8, 4, 2000, 1000)


def test_a_camera_without_scaler_crop_falls_back_to_the_cpu():
    camera = Picamera2(scene=_two_colours)
    del camera.camera_controls["ScalerCrop"]
    with PicameraSource(224, 224, picamera2_factory=lambda: camera, crop=RIGHT,
                        resize="crop") as source:
        frame = source.read()
    assert not source.crop_applied and "set_controls" not in camera.calls
    assert frame.shape == (224, 112, 3)
    assert _only(frame, (0, 0, 255))


def test_export_model_says_and_records_the_crop(tmp_path, backbones, sample, capsys):
    from edge_classifier.learning.export import read_export_metadata
    state = tmp_path / "state"
    with _device(tmp_path, backbones, RIGHT, sample) as device:
        device.learner.capture("cat", load_image(sample("cat.bmp")))
        device.learner.capture("bird", load_image(sample("bird.bmp")))
        device.learner.save()
    out = tmp_path / "model.tflite"
    code, printed, err = run(capsys, "export-model", out, "--state", state)
    assert code == 0, err
    assert "region: taught on source.crop = [0.5, 0, 1, 1]" in printed
    assert read_export_metadata(out.read_bytes())["backbone"]["crop"] == list(RIGHT)
