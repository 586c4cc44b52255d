"""The frame resize run by the TFLite runtime (backbone/resize.py), against Pillow's."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_classifier.backbone.resize import TfliteResize, make_resample, resize_model
from edge_classifier.backbone.runtime import make_interpreter
from edge_classifier.frames.images import load_image, pillow_resample, preprocess

REPO = Path(__file__).resolve().parents[1]
TFLITE_RUNTIME_ENV = "EDGE_CLASSIFIER_TFLITE_RUNTIME_PYTHON"


@pytest.fixture(scope="module")
def photo(sample):
    """A real photo the size of a Pi camera's lores stream (320x240)."""
    return pillow_resample(load_image(sample("parrot.jpg")), (240, 320))


def test_a_lores_frame_is_resized_like_pillow_would(photo):
    resample = TfliteResize()
    out = resample(photo[:, 40:280], (224, 224))
    reference = pillow_resample(photo[:, 40:280], (224, 224))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - reference.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 16  # the same picture, sampled a little apart


def test_a_view_with_strides_gives_what_its_copy_gives(photo):
    resample = TfliteResize()
    view = photo[10:230:, 30:300]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(resample(view, (224, 224)),
                                  resample(np.ascontiguousarray(view), (224, 224)))


def test_frames_of_changing_sizes_reuse_one_interpreter_and_stay_right(photo):
    resample = TfliteResize()
    sizes = [(240, 240), (231, 300), (240, 240), (120, 90), (1, 1), (5, 400)]
    for h, w in sizes:
        frame = np.ascontiguousarray(photo[:h, :w]) if h <= 240 and w <= 320 else \
            np.resize(photo, (h, w, 3))
        fresh = make_interpreter(resize_model((h, w), (224, 224)), 1, "fresh")
        fresh.set_tensor(fresh.get_input_details()[0]["index"], frame[None])
        fresh.invoke()
        expected = fresh.get_tensor(fresh.get_output_details()[0]["index"])[0]
        np.testing.assert_array_equal(resample(frame, (224, 224)), expected)
    assert len(resample._by_out) == 1  # one interpreter, its input resized to each frame


def test_a_reduction_of_twice_or_more_goes_to_pillows_antialiased_resize(photo):
    resample = TfliteResize()
    big = pillow_resample(photo, (480, 640))
    np.testing.assert_array_equal(resample(big, (224, 224)), pillow_resample(big, (224, 224)))
    assert resample._by_out == {}  # the TFLite model was never needed


def test_the_backbone_prepares_frames_with_it(backbones, photo):
    backbone = backbones()
    assert isinstance(backbone.resample, TfliteResize)
    np.testing.assert_array_equal(backbone.prepare(photo),
                                  backbone.resample(photo[:, 40:280], (224, 224)))
    # The same frame through preprocess with the backbone's resample: one shared function.
    np.testing.assert_array_equal(backbone.prepare(photo),
                                  preprocess(photo, (224, 224), "crop", backbone.resample))


def test_the_embedding_barely_moves_from_pillows(backbones, photo):
    backbone = backbones()
    a = backbone.run_prepared(backbone.prepare(photo)).embedding
    b = backbone.run_prepared(preprocess(photo, backbone.input_size, "crop")).embedding
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99


def test_two_threads_resizing_at_once_each_get_their_own_frame(photo):
    resample = TfliteResize()
    frames = [np.ascontiguousarray(photo[:, k:k + 240]) for k in (0, 80)]
    expected = [resample(f, (224, 224)) for f in frames]
    wrong = []

    def work(k):
        for _ in range(40):
            if not np.array_equal(resample(frames[k], (224, 224)), expected[k]):
                wrong.append(k)
    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [] and not np.array_equal(*expected)


def test_make_resample_checks_the_model_runs():
    assert isinstance(make_resample(2), TfliteResize)


def test_without_litert_the_frames_are_resized_by_pillow():
    """On tflite-runtime alone (32-bit Pi OS) LiteRT's schema is missing: Pillow resizes."""
    python = os.environ.get(TFLITE_RUNTIME_ENV)
    if not python:
        pytest.skip(f"set {TFLITE_RUNTIME_ENV} to a Python with tflite-runtime and NumPy 1")
    code = ("from edge_classifier.backbone.resize import make_resample\n"
            "from edge_classifier.backbone.runtime import runtime_version\n"
            "print(runtime_version(), make_resample(2))\n")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("tflite-runtime") and proc.stdout.rstrip().endswith("None")


@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0, 3)])
def test_an_empty_frame_is_an_image_error_not_a_crash(shape):
    """The runtime reads out of bounds on an empty input (the process died of SIGSEGV): the
    frame is refused first. In a child process, so a regression fails this test only."""
    code = ("import numpy as np\n"
            "from edge_classifier.backbone.resize import TfliteResize\n"
            "from edge_classifier.errors import ImageError\n"
            "from edge_classifier.frames.images import preprocess\n"
            "resample = TfliteResize()\n"
            f"frame = np.zeros({shape}, np.uint8)\n"
            "try:\n"
            "    preprocess(frame, (224, 224), 'crop', resample)\n"
            "except ImageError as exc:\n"
            "    print('refused:', exc)\n"
            "try:\n"
            "    resample(frame, (224, 224))\n"
            "except ValueError as exc:\n"
            "    print('refused:', exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("refused:") == 2 and "empty" in proc.stdout


# -- the resize as the model's first op (Backbone.run_frame, the device loop's path) ----------

@pytest.fixture
def at_once(monkeypatch):
    """run_frame builds its model on the first frame of a shape (not the 30th in a row), at
    once (not in a thread of its own)."""
    from edge_classifier.backbone import model
    monkeypatch.setattr(model, "STREAM_AFTER", 1)
    monkeypatch.setattr(model, "BUILD_IN_BACKGROUND", False)


@pytest.mark.parametrize("mode", ["crop", "squash"])
@pytest.mark.parametrize("size", [(240, 320), (320, 240), (300, 300), (100, 80), (447, 300)])
def test_a_stream_frame_gives_exactly_what_run_gives(at_once, backbones, photo, mode, size):
    backbone = backbones(resize=mode)
    frames = [pillow_resample(photo[:, k:k + 240], size) for k in (0, 40, 80)]
    for frame in frames:
        fused, plain = backbone.run_frame(frame), backbone.run(frame)
        np.testing.assert_array_equal(fused.embedding, plain.embedding)
        assert fused.scores is None
    assert backbone._stream[0] == frames[0].shape and backbone._stream[1] is not None
    assert not np.array_equal(backbone.run_frame(frames[0]).embedding,
                              backbone.run_frame(frames[2]).embedding)


def test_a_classifier_stream_frame_gives_its_scores_and_embedding(at_once, backbones, photo):
    backbone = backbones("mobilenet_v2_1.0_224_quant")
    fused, plain = backbone.run_frame(photo), backbone.run(photo)
    assert backbone._stream[1] is not None
    np.testing.assert_array_equal(fused.embedding, plain.embedding)
    np.testing.assert_array_equal(fused.scores, plain.scores)
    assert backbone.top_k(fused.scores, 1) == backbone.top_k(plain.scores, 1)


def test_frames_that_need_no_tflite_resize_are_run_as_before(at_once, backbones, photo):
    backbone = backbones()
    at_size = np.ascontiguousarray(photo[8:232, 48:272])
    big = pillow_resample(photo, (480, 640))  # 2x: Pillow's antialiased resize
    for frame in (at_size, big, at_size):
        np.testing.assert_array_equal(backbone.run_frame(frame).embedding,
                                      backbone.run(frame).embedding)
        assert backbone._stream == (frame.shape, None)


def test_a_stream_whose_size_changes_stays_right(at_once, backbones, photo):
    backbone = backbones()
    frames = [photo, pillow_resample(photo, (200, 260)), photo[:, :300], photo]
    for frame in frames * 2:
        np.testing.assert_array_equal(backbone.run_frame(frame).embedding,
                                      backbone.run(frame).embedding)
    view = photo[5:235, 7:311]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(backbone.run_frame(view).embedding,
                                  backbone.run_frame(np.ascontiguousarray(view)).embedding)


@pytest.mark.parametrize("frame", [np.zeros((0, 10, 3), np.uint8), np.zeros((10, 0, 3), np.uint8),
                                   np.zeros((240, 320), np.uint8),
                                   np.zeros((240, 320, 3), np.float32)])
def test_a_bad_stream_frame_is_refused_like_run_refuses_it(at_once, backbones, frame):
    from edge_classifier.errors import ImageError
    backbone = backbones()
    with pytest.raises(ImageError) as fused:
        backbone.run_frame(frame)
    with pytest.raises(ImageError) as plain:
        backbone.run(frame)
    assert str(fused.value) == str(plain.value)


def test_without_the_tflite_resize_a_stream_frame_is_run_as_before(at_once, backbones, photo):
    import copy
    backbone = copy.copy(backbones())
    backbone.resample, backbone._stream, backbone._build = None, None, None  # tflite-runtime
    np.testing.assert_array_equal(backbone.run_frame(photo).embedding,
                                  backbone.run(photo).embedding)
    assert backbone._stream == (photo.shape, None)


def test_with_resize_puts_the_resize_first_and_keeps_the_outputs(backbones):
    from edge_classifier.backbone.resize import with_resize
    backbone = backbones("mobilenet_v2_1.0_224_quant")
    interpreter = make_interpreter(with_resize(backbone._content, (240, 320)), 1, "fused")
    detail = interpreter.get_input_details()[0]
    assert list(detail["shape"]) == [1, 240, 320, 3] and detail["dtype"] == np.uint8
    assert detail["quantization"] == backbone._input["quantization"]
    old = [list(d["shape"]) for d in backbone._interpreter.get_output_details()]
    assert [list(d["shape"]) for d in interpreter.get_output_details()] == old


def test_the_model_is_built_for_a_stream_not_for_photos_of_many_sizes(monkeypatch, backbones,
                                                                      photo):
    """A replay of a folder gives frames of many sizes: building a model for each would stall
    every frame ~0.1 s. Only STREAM_AFTER frames of one shape in a row build one, and a
    frame of another shape then leaves it in place."""
    import copy
    from edge_classifier.backbone.model import STREAM_AFTER
    from edge_classifier.backbone import model
    monkeypatch.setattr(model, "BUILD_IN_BACKGROUND", False)
    backbone = copy.copy(backbones())
    backbone._stream, backbone._seen, backbone._build = None, (None, 0), None
    a, b = photo, np.ascontiguousarray(photo[:, :300])
    for i in range(3 * STREAM_AFTER):
        backbone.run_frame(b if i % 2 else a)  # ends on b
    assert backbone._stream is None
    for _ in range(STREAM_AFTER - 1):
        backbone.run_frame(a)
    assert backbone._stream is None
    backbone.run_frame(a)
    stream = backbone._stream[1]
    assert backbone._stream[0] == a.shape and stream is not None
    np.testing.assert_array_equal(backbone.run_frame(b).embedding, backbone.run(b).embedding)
    assert backbone._stream[1] is stream  # a one-off frame of another size: run(), kept
    np.testing.assert_array_equal(backbone.run_frame(a).embedding, backbone.run(a).embedding)
    for _ in range(2 * STREAM_AFTER):  # odd frames between the stream's: never in a row
        backbone.run_frame(b)
        backbone.run_frame(a)
    assert backbone._stream[1] is stream
    for _ in range(STREAM_AFTER):
        backbone.run_frame(b)  # the stream's size changed for good: a model for the new one
    assert backbone._stream[0] == b.shape and backbone._stream[1] is not stream


def test_the_device_loop_gives_the_predictions_run_gives(at_once, device_factory, capsys,
                                                         tmp_path, photo):
    """Device.run on 320x240 replay frames (resized by the model's first op) publishes what
    the learner predicts from Backbone.run on the same frames."""
    import json

    from devicekit import make_config
    from mosquitto import BASE
    from PIL import Image

    from edge_classifier.frames.sources import ReplaySource
    paths = []
    for k, frame in enumerate((photo, np.ascontiguousarray(photo[:, ::-1]),
                               np.ascontiguousarray(photo[::-1]))):
        paths.append(tmp_path / f"frame{k}.png")
        Image.fromarray(frame).save(paths[-1])
    device = device_factory(make_config(), source=ReplaySource(paths))
    frames = [device.source.read() for _ in range(3)]
    assert {f.shape for f in frames} == {(240, 320, 3)}
    device.learner.capture("bird", frames[0])
    device.learner.capture("cat", frames[1])
    expected = [device.learner.predict(f) for f in frames]
    capsys.readouterr()
    device.run(frames=6)
    lines = (json.loads(raw) for raw in capsys.readouterr().out.splitlines())
    got = [line["payload"] for line in lines if line["topic"] == f"{BASE}/prediction"]
    assert device.backbone._stream[1] is not None  # the loop ran the model with the resize
    assert [p["frame"] for p in got] == list(range(1, 7))
    for p, e in zip(got, expected * 2):
        assert p["label"] == e.label
        assert p["confidence"] == pytest.approx(e.confidence, abs=1e-6)


def test_the_model_is_built_beside_the_frames_which_run_meanwhile(monkeypatch, backbones, photo):
    """The build (~0.1 s here, longer on a Pi Zero) runs in a thread of its own: the frames
    go to run() until it is there, then to it; a build that fails leaves them with run()."""
    import copy

    from edge_classifier.backbone import model
    monkeypatch.setattr(model, "STREAM_AFTER", 1)
    gate, real = threading.Event(), model.with_resize

    def held(*args):
        assert gate.wait(60)
        return real(*args)
    monkeypatch.setattr(model, "with_resize", held)
    backbone = copy.copy(backbones())
    backbone._stream, backbone._seen, backbone._build = None, (None, 0), None
    expected = backbone.run(photo).embedding
    for _ in range(3):  # the build is held: every frame is run as before, none waits for it
        np.testing.assert_array_equal(backbone.run_frame(photo).embedding, expected)
    build = backbone._build
    assert backbone._stream is None and build is not None and not build.done.is_set()
    gate.set()
    assert build.done.wait(60)
    np.testing.assert_array_equal(backbone.run_frame(photo).embedding, expected)
    assert backbone._build is None and backbone._stream[1] is build.result is not None

    failing = threading.Event()

    def broken(*args):
        assert failing.wait(60)
        raise MemoryError("no room for a second interpreter")
    monkeypatch.setattr(model, "with_resize", broken)
    other = np.ascontiguousarray(photo[:, :300])
    backbone.run_frame(other)
    build = backbone._build
    assert build is not None and build.shape == other.shape
    failing.set()
    assert build.done.wait(60) and build.result is None
    np.testing.assert_array_equal(backbone.run_frame(other).embedding,
                                  backbone.run(other).embedding)
    assert backbone._stream == (other.shape, None)  # run() serves that shape from now on
