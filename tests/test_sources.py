"""Frame sources: replays of real image files, and PicameraSource against the stand-in camera."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import sys

import numpy as np
import pytest
from PIL import Image

from edge_classifier.core.clock import FakeClock
from edge_classifier.config import SourceConfig
from edge_classifier.frames.sources import (CameraError, EndOfStream, NoImagesError, PicameraSource,
                                     ReplaySource, SourceClosedError, lores_to_rgb, make_source,
                                     yuv420_to_rgb)

from picamera2_standin import ColorSpace, Picamera2, encode_i420, failing_picamera2, in_thread

#: How long a watchdog waits for a call that should return at once; only reached on a hang.
WATCHDOG = 30.0

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def write_image(path, colour, size=(32, 24)):
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """Three solid-colour images: a.png red, b.png green, c.png blue."""
    d = tmp_path / "frames"
    d.mkdir()
    for name, colour in (("a.png", RED), ("b.png", GREEN), ("c.png", BLUE)):
        write_image(d / name, colour)
    return d


def colour_of(frame):
    return tuple(int(v) for v in frame[0, 0])


def camera(**kwargs):
    return functools.partial(Picamera2, **kwargs)


def quadrants(width, height, n=0):
    """Red, green / blue, white quadrants (boundaries on even pixels)."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    hw, hh = width // 2, height // 2
    img[:hh, :hw], img[:hh, hw:] = RED, GREEN
    img[hh:, :hw], img[hh:, hw:] = BLUE, WHITE
    return img


# --- replay -------------------------------------------------------------------------------------
def test_replay_reads_folder_in_name_order_as_rgb(folder):
    with ReplaySource(folder) as source:
        frames = [source.read() for _ in range(3)]
    assert [colour_of(f) for f in frames] == [RED, GREEN, BLUE]
    assert frames[0].shape == (24, 32, 3) and frames[0].dtype == np.uint8


def test_replay_loops_by_default(folder):
    with ReplaySource(folder) as source:
        colours = [colour_of(source.read()) for _ in range(4)]
    assert colours[3] == RED
    assert source.frames_read == 4


def test_replay_without_loop_raises_end_of_stream(folder):
    source = ReplaySource(folder, loop=False)
    for _ in range(3):
        source.read()
    with pytest.raises(EndOfStream):
        source.read()


def test_iterating_a_non_looping_replay_stops_at_the_end(folder):
    with ReplaySource(folder, loop=False) as source:
        assert len(list(source)) == 3


def test_replay_accepts_a_list_of_files(folder):
    with ReplaySource([folder / "c.png", folder / "a.png"]) as source:
        assert [colour_of(source.read()) for _ in range(2)] == [BLUE, RED]


def test_replay_decodes_each_file_once(folder, monkeypatch):
    import edge_classifier.frames.sources as sources
    calls = []
    real = sources.load_image
    monkeypatch.setattr(sources, "load_image", lambda p, **kw: calls.append(p) or real(p, **kw))
    with ReplaySource(folder) as source:
        for _ in range(9):
            source.read()
    assert len(calls) == 3


def test_replay_frames_are_independent_copies(folder):
    with ReplaySource(folder) as source:
        first = source.read()
        first[:] = 0
        source.read(), source.read()
        assert colour_of(source.read()) == RED


def test_replay_skips_corrupt_file_with_one_warning(folder, caplog):
    (folder / "b.png").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="edge_classifier.frames.sources"):
        with ReplaySource(folder) as source:
            colours = [colour_of(source.read()) for _ in range(6)]
    assert colours == [RED, BLUE] * 3
    warnings = [r for r in caplog.records if "b.png" in r.getMessage()]
    assert len(warnings) == 1


def test_replay_with_no_readable_image_names_the_path(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(NoImagesError, match=str(tmp_path)):
        ReplaySource(tmp_path)


def test_replay_of_empty_folder_is_an_error(tmp_path):
    with pytest.raises(NoImagesError, match="no readable image"):
        ReplaySource(tmp_path)


def test_replay_of_missing_path_is_an_error(tmp_path):
    with pytest.raises(NoImagesError, match="no such file or folder"):
        ReplaySource(tmp_path / "missing")


def test_replay_fps_cap_sleeps_on_the_clock(folder):
    clock = FakeClock()
    with ReplaySource(folder, fps=10, clock=clock) as source:
        for _ in range(5):
            source.read()
    assert clock.now() == pytest.approx(0.4)  # first frame at once, then every 0.1 s


def test_replay_fps_cap_does_not_sleep_when_caller_is_slow(folder):
    clock = FakeClock()
    with ReplaySource(folder, fps=10, clock=clock) as source:
        source.read()
        clock.advance(0.5)
        source.read()
    assert clock.now() == pytest.approx(0.5)


def test_replay_with_size_hint_decodes_big_photos_near_the_model_size(tmp_path):
    write_image(tmp_path / "big.png", GREEN, size=(2000, 1000))
    with ReplaySource(tmp_path, size_hint=(224, 224)) as source:
        frame = source.read()
    assert frame.shape == (500, 1000, 3) and colour_of(frame) == GREEN  # reduced by 2
    with pytest.raises(ValueError, match="size_hint"):  # a bad hint fails at once
        ReplaySource(tmp_path, size_hint=(224, -1))


def test_make_source_passes_the_size_hint_to_the_replay(tmp_path):
    write_image(tmp_path / "big.png", GREEN, size=(2000, 1000))
    with make_source(SourceConfig(kind="replay", path=str(tmp_path)),
                     size_hint=(224, 224)) as source:
        assert source.size_hint == (224, 224)
        assert source.read().shape == (500, 1000, 3)


def test_replay_skips_a_file_over_max_pixels_with_one_warning(folder, caplog):
    write_image(folder / "d.png", WHITE, size=(64, 48))  # 3072 pixels; the others 768
    with caplog.at_level(logging.WARNING, logger="edge_classifier.frames.sources"):
        with ReplaySource(folder, max_pixels=1000) as source:
            colours = [colour_of(source.read()) for _ in range(4)]
    assert colours == [RED, GREEN, BLUE, RED]
    assert [r.getMessage() for r in caplog.records if "d.png" in r.getMessage()] == [
        f"skipping {folder / 'd.png'}: image too large: 64x48 pixels (0.00307 megapixels, more "
        f"than the limit of 0.001); shrink it first"]


def test_read_after_close_raises_and_close_twice_is_safe(folder):
    source = ReplaySource(folder)
    source.close()
    source.close()
    with pytest.raises(SourceClosedError):
        source.read()


# --- colour conversion --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, memory", [
    ("RGB888", [30, 20, 10]), ("BGR888", [10, 20, 30]),
    ("XRGB8888", [30, 20, 10, 255]), ("XBGR8888", [10, 20, 30, 255]),
])
def test_rgb_formats_convert_by_memory_order(fmt, memory):
    array = np.array(memory, dtype=np.uint8).reshape(1, 1, -1).repeat(2, axis=0)
    rgb = lores_to_rgb(array, fmt, 1)
    assert rgb.shape == (2, 1, 3)
    assert rgb[0, 0].tolist() == [10, 20, 30]


def test_yuv420_grey_levels_are_exact_in_full_range():
    grey = np.full((4, 4, 3), 128, dtype=np.uint8)
    assert (yuv420_to_rgb(encode_i420(grey), 4) == 128).all()


def test_yuv420_ignores_stride_padding():
    rgb = quadrants(8, 4)
    padded = yuv420_to_rgb(encode_i420(rgb, stride=64), 8)
    assert padded.shape == (4, 8, 3)
    assert np.abs(padded.astype(int) - rgb).max() <= 3


def test_unsupported_format_is_a_camera_error():
    with pytest.raises(CameraError, match="NV12"):
        lores_to_rgb(np.zeros((6, 4), np.uint8), "NV12", 4)


# --- the camera (stand-in) ----------------------------------------------------------------------
def test_camera_yuv420_red_scene_arrives_red():
    with PicameraSource(320, 240, picamera2_factory=camera(scene=RED)) as source:
        frame = source.read()
        assert source.format == "YUV420"  # a Pi 4: lores must be YUV
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
    assert np.abs(frame.astype(int) - RED).max() <= 3


def test_camera_yuv420_quadrants_keep_their_place_and_colour():
    with PicameraSource(64, 48, picamera2_factory=camera(scene=quadrants)) as source:
        frame = source.read()
    assert np.abs(frame.astype(int) - quadrants(64, 48)).max() <= 3


def test_camera_limited_range_yuv_is_expanded():
    factory = camera(scene=quadrants, colour_space=ColorSpace.Smpte170m())
    with PicameraSource(64, 48, picamera2_factory=factory) as source:
        frame = source.read()
    assert np.abs(frame.astype(int) - quadrants(64, 48)).max() <= 3


def test_camera_on_pi5_uses_rgb888_lores_reversing_bgr_memory():
    with PicameraSource(64, 48, picamera2_factory=camera(scene=quadrants,
                                                         platform="PISP")) as source:
        frame = source.read()
        assert source.format == "RGB888"
    assert np.array_equal(frame, quadrants(64, 48))


def test_camera_configures_lores_stream_and_captures_once_per_read():
    with PicameraSource(320, 240, picamera2_factory=camera()) as source:
        cam = Picamera2.instances[-1]
        source.read(), source.read()
        assert cam.camera_config["lores"]["size"] == (320, 240)
        assert cam.calls.count("capture_array") == 2
        assert source.frames_read == 2
    assert cam.closed and not cam.started


def test_camera_that_cannot_open_says_what_to_check():
    with pytest.raises(CameraError, match="rpicam-hello --list-cameras"):
        PicameraSource(picamera2_factory=failing_picamera2())


def test_camera_failing_to_start_is_closed():
    with pytest.raises(CameraError, match="start"):
        PicameraSource(picamera2_factory=camera(fail_on="start"))
    assert Picamera2.instances[-1].closed


def test_hung_camera_raises_camera_error():
    with PicameraSource(picamera2_factory=camera(stall=True), timeout=0.01) as source:
        with pytest.raises(CameraError, match=r"no frame from the camera for 0.01 s: it is hung "
                                              r"or disconnected; check that the ribbon cable"):
            source.read()


def test_hung_camera_still_closes():
    # picamera2's stop() queues behind the timed-out capture and waits without a timeout: the
    # old close() hung here for ever.
    source = PicameraSource(picamera2_factory=camera(stall=True), timeout=0.01)
    cam = Picamera2.instances[-1]
    with pytest.raises(CameraError, match="no frame from the camera"):
        source.read()
    closer, outcome = in_thread(source.close)
    try:
        closer.join(WATCHDOG)
        assert not closer.is_alive(), "close() hung behind the timed-out capture"
    finally:
        cam.cancel_all_and_flush()  # lets a hung close() finish, so no thread is left behind
    assert outcome == [None]
    assert cam.closed and not cam.started and cam.queued_jobs == 0


def test_timed_out_capture_is_flushed_so_a_recovered_camera_reads_on():
    with PicameraSource(picamera2_factory=camera(stall=True), timeout=0.01) as source:
        cam = Picamera2.instances[-1]
        with pytest.raises(CameraError):
            source.read()
        assert cam.queued_jobs == 0 and "cancel_all_and_flush" in cam.calls
        cam.resume()
        source.read()
        assert cam.captures == 1  # no stale job took a frame first


def test_close_from_another_thread_ends_a_waiting_read():
    source = PicameraSource(picamera2_factory=camera(stall=True), timeout=3600)
    cam = Picamera2.instances[-1]
    reader, outcome = in_thread(source.read)
    assert cam.wait_until(lambda c: c.queued_jobs == 1)
    closer, closed = in_thread(source.close)
    try:
        closer.join(WATCHDOG)
        reader.join(WATCHDOG)
        assert not closer.is_alive() and closed == [None]
        assert not reader.is_alive()
    finally:
        cam.cancel_all_and_flush()
    assert len(outcome) == 1 and isinstance(outcome[0], SourceClosedError)
    assert cam.closed


def test_camera_whose_stop_never_returns_is_left_after_stop_timeout(caplog):
    source = PicameraSource(picamera2_factory=camera(block_on="stop"), stop_timeout=0.01)
    cam = Picamera2.instances[-1]
    closer, outcome = in_thread(source.close)
    try:
        with caplog.at_level(logging.ERROR, logger="edge_classifier.frames.camera"):
            closer.join(WATCHDOG)
        assert not closer.is_alive(), "close() waited for a stop() that never returns"
        assert outcome == [None]
        assert "did not stop within 0.01 s" in caplog.text
    finally:
        cam.unblock.set()  # the driver call returns; the helper thread finishes the close
    assert cam.wait_until(lambda c: c.closed)


# --- the stand-in behaves like picamera2 --------------------------------------------------------
def test_standin_stop_waits_behind_a_timed_out_capture_until_cancel_all_and_flush():
    cam = Picamera2.started(stall=True)
    with pytest.raises(TimeoutError):
        cam.capture_array("lores", wait=0.01)
    assert cam.queued_jobs == 1  # the timed-out job stays queued
    stopper, outcome = in_thread(cam.stop)
    assert cam.wait_until(lambda c: c.queued_jobs == 2)  # the stop job, behind the capture
    assert stopper.is_alive() and cam.started and outcome == []
    cam.cancel_all_and_flush()  # cancels the waiting stop too, as upstream does
    stopper.join(WATCHDOG)
    assert len(outcome) == 1 and isinstance(outcome[0], concurrent.futures.CancelledError)
    cam.stop()
    assert not cam.started


def test_standin_queued_capture_takes_the_next_frame_when_frames_resume():
    cam = Picamera2.started(stall=True)
    job = cam.capture_array("lores", wait=False)
    assert not job.done
    cam.resume()
    assert job.get_result(timeout=0).shape == (72, 64)  # a 64x48 YUV420 frame
    assert cam.captures == 1 and cam.queued_jobs == 0


def test_standin_close_stops_the_event_loop_first_so_it_does_not_wait():
    cam = Picamera2.started(stall=True)
    with pytest.raises(TimeoutError):
        cam.capture_array("lores", wait=0.01)
    closer, outcome = in_thread(cam.close)
    closer.join(WATCHDOG)
    try:
        assert not closer.is_alive() and outcome == [None] and cam.closed
    finally:
        cam.cancel_all_and_flush()


def test_missing_picamera2_names_the_apt_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(CameraError, match="sudo apt install python3-picamera2"):
        PicameraSource()


def test_camera_close_twice_is_safe():
    source = PicameraSource(picamera2_factory=camera())
    source.close()
    source.close()
    assert Picamera2.instances[-1].calls.count("close") == 1


# --- the factory --------------------------------------------------------------------------------
def test_auto_uses_the_camera_when_it_opens(folder):
    with make_source(SourceConfig(kind="auto", width=64, height=48), default_paths=[folder],
                     picamera2_factory=camera()) as source:
        assert isinstance(source, PicameraSource)


def test_auto_falls_back_to_replay_of_default_paths(folder):
    with make_source(SourceConfig(kind="auto"), default_paths=[folder],
                     picamera2_factory=failing_picamera2()) as source:
        assert isinstance(source, ReplaySource)
        assert colour_of(source.read()) == RED


def test_auto_without_camera_or_replay_path_is_a_camera_error():
    with pytest.raises(CameraError, match="nothing to replay"):
        make_source(SourceConfig(kind="auto"), picamera2_factory=failing_picamera2())


def test_replay_kind_splits_path_on_colons_and_applies_options(folder):
    config = SourceConfig(kind="replay", path=f"{folder / 'c.png'}:{folder / 'a.png'}",
                          loop=False, fps=5)
    clock = FakeClock()
    with make_source(config, clock=clock) as source:
        assert [colour_of(f) for f in source] == [BLUE, RED]
    assert clock.now() == pytest.approx(0.2)


def test_picamera2_kind_raises_when_no_camera(folder):
    with pytest.raises(CameraError):
        make_source(SourceConfig(kind="picamera2"), default_paths=[folder],
                    picamera2_factory=failing_picamera2())
