"""The web studio's JSON API, driven as curl or Node-RED would: a real device (the real model,
replayed sample photos) with the studio on a free port of 127.0.0.1."""

from __future__ import annotations

import io
import json
import re
import socket
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from webkit import studio_factory, TIMEOUT, Client, Multipart, config_with, jpeg_of, photo_bytes, web_config

from edge_classifier.config import HeadConfig, SmoothingConfig, SourceConfig
from edge_classifier.datasets.folders import scan_folder
from edge_classifier.errors import WebServerError
from edge_classifier.frames.images import load_image

TAUGHT = (("cat", "cat.bmp"), ("bird", "bird.bmp"))


studio = pytest.fixture(studio_factory, name="studio")


def sample_files(device, name):
    folder = device.store.root / "samples"
    return {p.stem for p in folder.glob("*/*.npy")
            if (p.parent / "name").read_text("utf-8") == name}


def test_status_reports_the_classes_and_follows_the_frames(studio):
    s = studio(teach=TAUGHT)
    s.wait(lambda: (s.client.status()["prediction"] or {}).get("label") == "cat", "cat")
    status = s.client.status()
    assert status["classes"] == {"cat": 1, "bird": 1}
    assert set(status["prediction"]) >= {"label", "confidence", "scores", "unknown"}
    assert set(status["prediction"]["scores"]) == {"cat", "bird"}
    s.photos.show("bird.bmp")
    s.wait(lambda: s.client.status()["prediction"]["label"] == "bird", "bird")


def test_a_capture_adds_one_sample_on_disk(studio):
    s = studio()
    code, answer = s.client.post("/api/classes/cat/capture", {})
    assert code == 200 and answer["ok"] and answer["samples"] == 1, answer
    assert s.device.store.counts() == {"cat": 1}
    assert sample_files(s.device, "cat") == {answer["sample"]}
    code, answer = s.client.post("/api/classes/cat/capture", {"count": 3})
    assert code == 200 and answer["samples"] == 4
    assert len(sample_files(s.device, "cat")) == 4


def test_a_bad_capture_is_refused_with_its_reason(studio):
    s = studio()
    code, answer = s.client.post("/api/classes/..%2Fetc/capture", {})
    assert code == 400 and "path separator" in answer["error"]
    code, answer = s.client.post("/api/classes/cat/capture", {"count": 1000})
    assert code == 400 and "count" in answer["error"]
    assert s.device.store.counts() == {}


def test_uploading_three_pictures_creates_a_class_and_names_the_bad_file(studio, sample):
    s = studio()
    cat = photo_bytes(sample, "cat.bmp")
    other = jpeg_of(load_image(sample("cat.bmp"))[8:-8, 8:-8])  # another picture of the cat
    body = Multipart(("images", "cat1.jpg", cat), ("images", "cat2.jpg", other),
                     ("images", "notes.txt", b"not a picture"),
                     ("images", "cat3.png", _png(sample, "cat.bmp")),
                     ("images", "again.jpg", cat))  # the same picture twice: stored once
    code, answer = s.client.post("/api/classes/cat/samples", body)
    assert code == 200 and answer["ok"], answer
    assert answer["added"] == 3 and answer["samples"] == 3 and answer["skipped"] == 1
    assert len(answer["failed"]) == 1 and answer["failed"][0].startswith("notes.txt: ")
    assert s.device.store.counts() == {"cat": 3}
    assert len(sample_files(s.device, "cat")) == 3
    assert not any(Path(s.device.web.staging).iterdir())  # staged uploads are gone


def test_uploads_keep_the_class_limit(studio, sample):
    config = web_config()
    s = studio(config=config.replace(head=HeadConfig(max_samples_per_class=2)))
    pictures = [photo_bytes(sample, p) for p in ("cat.bmp", "bird.bmp", "owl.jpg")]
    code, answer = s.client.post("/api/classes/cat/samples",
                                 Multipart(*[("images", f"{i}.jpg", b) for i, b in enumerate(pictures)]))
    assert code == 200 and answer["added"] == 2 and answer["over_limit"] == 1
    assert s.device.store.counts() == {"cat": 2}


def test_uploads_are_bounded_in_bytes_files_and_pixels(studio, sample):
    s = studio(config=config_with(web_config(), max_upload_bytes=20000, max_upload_files=2,
                                  max_upload_pixels=100 * 100))
    small = jpeg_of(np.full((50, 50, 3), 128, np.uint8))
    big = photo_bytes(sample, "grace_hopper.bmp")
    assert len(big) > 20000
    code, answer = s.client.post("/api/classes/x/samples",
                                 Multipart(("images", "big.jpg", big), ("images", "ok.jpg", small)))
    assert code == 200 and answer["added"] == 1
    assert answer["failed"] == ["big.jpg: larger than the limit of 20000 bytes "
                                "(web.max_upload_bytes)"]
    huge = _png_of(np.zeros((200, 200, 3), np.uint8))
    code, answer = s.client.post("/api/classes/x/samples", Multipart(("images", "huge.png", huge)))
    assert code == 409 and "200x200 is more than the limit of 10000 pixels" in answer["failed"][0]
    code, answer = s.client.post("/api/classes/x/samples",
                                 Multipart(*[("images", f"{i}.jpg", small) for i in range(3)]))
    assert code == 400 and "more than 2 files" in answer["error"]
    assert s.device.store.counts() == {"x": 1}


def test_file_names_from_the_network_are_only_shown(studio, sample, tmp_path):
    s = studio()
    cat = photo_bytes(sample, "cat.bmp")
    code, answer = s.client.post("/api/classes/cat/samples", Multipart(
        ("images", "../../escape.jpg", cat), ("images", "../x/bad\u202etxt.jpg", b"junk")))
    assert code == 200 and answer["added"] == 1
    assert answer["failed"] == ["bad?txt.jpg: not a picture (or a format that is not supported)"]
    assert not list(tmp_path.parent.rglob("escape.jpg"))
    code, answer = s.client.post("/api/classes/cat/samples", Multipart(
        ("images", "bell\x07.jpg", cat)))  # a control character breaks the form's header
    assert code == 400 and answer["error"].startswith("the upload is malformed")


def test_predicting_a_picture_says_it_in_words_and_stores_nothing(studio, sample):
    s = studio(teach=TAUGHT)
    before = sorted(p.name for p in s.device.store.root.rglob("*"))
    code, answer = s.client.post("/api/predict",
                                 Multipart(("image", "x.jpg", photo_bytes(sample, "bird.bmp"))))
    assert code == 200 and answer["label"] == "bird", answer
    assert re.fullmatch(r"\d+ % sure it's bird", answer["text"])
    assert set(answer["scores"]) == {"cat", "bird"}
    assert s.device.store.counts() == {"cat": 1, "bird": 1}
    assert sorted(p.name for p in s.device.store.root.rglob("*")) == before


def test_predicting_before_anything_is_taught(studio, sample):
    s = studio()
    code, answer = s.client.post("/api/predict",
                                 Multipart(("image", "x.jpg", photo_bytes(sample, "cat.bmp"))))
    assert code == 200 and answer["label"] == "unknown"
    assert answer["text"].startswith("nothing taught yet")
    code, answer = s.client.post("/api/predict", Multipart(("image", "x.txt", b"text")))
    assert code == 400 and "x.txt: not a picture" in answer["error"]


def test_rename_delete_clear_and_delete_one_sample(studio):
    s = studio(teach=TAUGHT)
    s.client.post("/api/classes/cat/capture", {"count": 2})
    code, answer = s.client.post("/api/classes/cat/rename", {"to": "kitty"})
    assert code == 200 and answer["to"] == "kitty"
    assert s.device.store.classes == ["kitty", "bird"]
    sid = s.client.status()["catalogue"][0]["recent"][0]
    code, answer = s.client.delete(f"/api/classes/kitty/samples/{sid}")
    assert code == 200 and answer["samples"] == 2
    assert sid not in sample_files(s.device, "kitty") and len(sample_files(s.device, "kitty")) == 2
    code, answer = s.client.post("/api/classes/kitty/clear")
    assert code == 200 and answer["deleted"] == 2 and s.device.store.counts()["kitty"] == 0
    code, answer = s.client.delete("/api/classes/bird")
    assert code == 200 and s.device.store.classes == ["kitty"]
    code, answer = s.client.delete("/api/classes/bird")
    assert code == 409 and "no class 'bird'" in answer["error"]


def test_unsure_frames_are_kept_rate_limited_and_bounded(studio):
    config = web_config(inbox_size=2, inbox_interval=5.0)
    s = studio(config=config.replace(smoothing=SmoothingConfig(frames=2, threshold=0.99)),
               teach=TAUGHT, first="sunflower.bmp")
    s.wait(lambda: len(s.client.get("/api/inbox")[1]["items"]) == 1, "a frame in the inbox")
    frames = s.device.counters.frames
    s.wait(lambda: s.device.counters.frames >= frames + 5, "five more frames")
    assert len(s.client.get("/api/inbox")[1]["items"]) == 1  # one per 5 s of the device's clock
    first = s.client.get("/api/inbox")[1]["items"][0]["id"]
    for n in (2, 3):
        s.clock.advance(5)
        s.wait(lambda: s.device.web.counts["inbox_kept"] == n, f"frame {n} kept")
    items = s.client.get("/api/inbox")[1]["items"]
    assert len(items) == 2 and first not in [i["id"] for i in items]  # the oldest went
    assert s.device.stats()["inbox"] == 2


def test_the_event_stream_starts_with_the_inbox_kept_before_it_opened(studio):
    """The page used to fetch /api/inbox beside the stream: an answer from before a frame was
    kept could arrive after the stream's inbox event and empty the page's inbox for good (the
    next frame is kept only after web.inbox_interval of the device's clock). The stream now
    starts with the inbox, in order."""
    config = web_config()
    s = studio(config=config.replace(smoothing=SmoothingConfig(frames=2, threshold=0.99)),
               teach=TAUGHT, first="sunflower.bmp")
    s.wait(lambda: s.client.get("/api/inbox")[1]["items"], "a frame in the inbox")
    kept = [i["id"] for i in s.client.get("/api/inbox")[1]["items"]]
    with urllib.request.urlopen(s.url + "api/events", timeout=TIMEOUT) as stream:
        events = []
        while len(events) < 2 or events[-1][1] is None:
            line = stream.readline().decode()
            if line.startswith("event: "):
                events.append([line.split(": ", 1)[1].strip(), None])
            elif line.startswith("data: "):
                events[-1][1] = json.loads(line[6:])
    assert [kind for kind, _ in events] == ["status", "inbox"]
    assert [i["id"] for i in events[1][1]["items"]] == kept


def test_an_inbox_frame_filed_into_a_class_becomes_a_sample(studio):
    config = web_config()
    s = studio(config=config.replace(smoothing=SmoothingConfig(frames=2, threshold=0.99)),
               teach=TAUGHT, first="sunflower.bmp")
    s.wait(lambda: s.client.get("/api/inbox")[1]["items"], "a frame in the inbox")
    item = s.client.get("/api/inbox")[1]["items"][0]
    assert item["closest"] in ("cat", "bird") and "confidence" in item
    code, png = s.client.get(f"/api/inbox/{item['id']}.png")
    assert code == 200 and Image.open(io.BytesIO(png)).size == (s.photos.frame_of(
        "sunflower.bmp").shape[1], s.photos.frame_of("sunflower.bmp").shape[0])
    code, answer = s.client.post(f"/api/inbox/{item['id']}/file", {"class": "sunflower"})
    assert code == 200 and answer["class"] == "sunflower" and answer["samples"] == 1, answer
    assert s.device.store.counts()["sunflower"] == 1
    assert item["id"] not in [i["id"] for i in s.client.get("/api/inbox")[1]["items"]]
    code, answer = s.client.post(f"/api/inbox/{item['id']}/file", {"class": "sunflower"})
    assert code == 409 and "no frame" in answer["error"]


def test_an_inbox_frame_can_be_discarded(studio):
    config = web_config()
    s = studio(config=config.replace(smoothing=SmoothingConfig(frames=2, threshold=0.99)),
               teach=TAUGHT, first="sunflower.bmp")
    s.wait(lambda: s.client.get("/api/inbox")[1]["items"], "a frame in the inbox")
    item = s.client.get("/api/inbox")[1]["items"][0]["id"]
    code, _ = s.client.delete(f"/api/inbox/{item}")
    assert code == 200 and s.client.get(f"/api/inbox/{item}.png")[0] == 404
    assert s.device.store.counts() == {"cat": 1, "bird": 1}


def test_insight_is_the_confusion_matrix_of_the_samples(studio):
    s = studio(teach=TAUGHT + (("cat", "cat.bmp"), ("bird", "parrot.jpg")))
    code, report = s.client.get("/api/insight")
    assert code == 200 and report["classes"] == ["cat", "bird"] and report["samples"] == 4
    assert np.asarray(report["matrix"]).sum() == 4 and len(report["matrix"]) == 2
    assert report["few"] == ["cat", "bird"]  # fewer than 5 samples each
    assert [c["samples"] for c in report["per_class"]] == [2, 2]


def test_insight_scores_the_samples_off_the_loops_thread_and_keeps_them(studio, monkeypatch):
    import threading
    from edge_classifier.comms.web.studio import Studio
    from edge_classifier.learning.heads import auto
    s = studio(teach=TAUGHT + (("cat", "cat.bmp"), ("bird", "parrot.jpg")))
    seen = {"scores": []}
    real_insight, real_calibrate = Studio._insight, auto.calibrate

    def on_loop(self):
        seen["event"] = threading.current_thread()
        self.learner.head._loo = None  # not kept by the calibration (as beyond HELD_OUT_ROWS)
        return real_insight(self)

    def calibrate(snap, system_only=False, every=False):
        if every:
            seen["scores"].append(threading.current_thread())
        return real_calibrate(snap, system_only, every)
    monkeypatch.setattr(Studio, "_insight", on_loop)
    monkeypatch.setattr(auto, "calibrate", calibrate)
    code, report = s.client.get("/api/insight")
    assert code == 200 and report["samples"] == 4 and np.asarray(report["matrix"]).sum() == 4
    assert len(seen["scores"]) == 1 and seen["scores"][0] is not seen["event"]
    code, again = s.client.get("/api/insight")
    assert code == 200 and again["matrix"] == report["matrix"]  # (a recalibration may
    assert len(seen["scores"]) == 1  # have moved the temperature) scores kept for the head


def test_export_is_a_zip_of_class_folders_that_train_reads(studio, tmp_path):
    s = studio(teach=TAUGHT + (("cat", "cat.bmp"),))
    code, data = s.client.get("/api/export.zip", raw=True)
    assert code == 200
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        z.extractall(tmp_path / "export")
    assert sorted(n.split("/")[0] for n in names) == ["bird", "cat", "cat"]
    dataset = scan_folder(str(tmp_path / "export"))
    assert sorted(dataset.class_names) == ["bird", "cat"] and len(dataset.paths) == 3


def test_thumbnails_are_served_from_the_store_only(studio):
    s = studio(teach=TAUGHT)
    sid = s.client.status()["catalogue"][0]["recent"][0]
    code, jpeg = s.client.get(f"/api/classes/cat/samples/{sid}.jpg")
    assert code == 200 and Image.open(io.BytesIO(jpeg)).format == "JPEG"
    assert s.client.get(f"/api/classes/bird/samples/{sid}.jpg")[0] == 404
    assert s.client.get("/api/classes/cat/samples/..%2F..%2Fstore.json")[0] == 404


def test_cross_site_requests_are_refused_and_change_nothing(studio):
    s = studio()
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": s.url.rstrip("/").replace("http:", "https:")}):
        code, answer = s.client.post("/api/classes/cat/capture", {}, headers=headers)
        assert code == 403 and "refused" in answer["error"], headers
    assert s.device.store.counts() == {}
    code, _ = s.client.post("/api/classes/cat/capture", {},
                            headers={"Origin": s.url.rstrip("/"), "Sec-Fetch-Site": "same-origin"})
    assert code == 200 and s.device.store.counts() == {"cat": 1}


def test_a_foreign_host_name_is_refused_which_stops_dns_rebinding(studio):
    s = studio()
    port = s.device.web.port
    assert s.client.get("/api/status", headers={"Host": f"evil.example:{port}"})[0] == 403
    assert s.client.get("/", headers={"Host": f"pi.local:{port}"})[0] == 403
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert s.client.get("/api/status", headers={"Host": host})[0] == 200


def test_named_hosts_are_accepted(studio):
    s = studio(config=web_config(hosts="pi.local"))
    assert s.client.get("/api/status", headers={"Host": "pi.local:80"})[0] == 200


def test_a_password_protects_everything_but_the_login_page(studio):
    s = studio(config=web_config(password="s3cret"))
    anonymous = Client(s.url)
    code, answer = anonymous.get("/api/status")
    assert code == 401 and "log in" in answer["error"]
    assert anonymous.post("/api/classes/cat/capture", {})[0] == 401
    assert anonymous.get("/login")[0] == 200
    assert Client(s.url, password="wrong").get("/api/status")[0] == 401
    assert Client(s.url, password="s3cret").get("/api/status")[0] == 200
    bearer = Client(s.url, headers={"Authorization": "Bearer s3cret"})
    assert bearer.post("/api/classes/cat/capture", {})[0] == 200
    code, answer = anonymous.post("/api/login", {"password": "nope"})
    assert code == 401
    request = urllib.request.Request(s.url + "api/login", data=b'{"password": "s3cret"}',
                                     method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as r:
        cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = Client(s.url, headers={"Cookie": cookie.split(";")[0]})
    assert session.get("/api/status")[0] == 200
    assert s.device.store.counts() == {"cat": 1}


def test_every_response_carries_a_strict_content_security_policy(studio):
    s = studio()
    with urllib.request.urlopen(s.url, timeout=TIMEOUT) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        policy = r.headers["Content-Security-Policy"]
        page = r.read().decode()
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    assert "<script" in page and "http://" not in page and "https://" not in page  # no CDN


def test_a_port_in_use_is_one_clear_error(device_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(WebServerError) as caught:
            device_factory(web_config(listen=f"127.0.0.1:{port}"))
    assert str(caught.value) == (f"web.listen: cannot listen on 127.0.0.1 port {port} "
                                 "(Address already in use)")


def test_frames_from_the_browser_camera_are_classified(studio, sample, backbones, tmp_path):
    config = web_config()
    s = studio(config=config.replace(source=SourceConfig(kind="browser")), source=False,
               backbone=backbones(), state=tmp_path / "state")
    assert s.device.source.fallback is None
    code, answer = s.client.post("/api/classes", {"class": "empty"})  # no frame needed
    assert code == 200 and s.device.counters.frames == 0
    frames = {p: jpeg_of(_rgb(sample, p)) for p in ("cat.bmp", "bird.bmp")}

    def feed(photo):
        code, answer = s.client.post("/api/camera/frame", frames[photo],
                                     headers={"Content-Type": "image/jpeg"})
        assert code == 200 and answer["ok"]
        return True

    for name, photo in TAUGHT:  # captured from the next frame the browser sends
        # first let the loop use up a frame of the previous photo it may still hold
        seen = s.device.counters.frames
        s.wait(lambda: feed(photo) and s.device.counters.frames >= seen + 2, f"{photo} seen")
        s.device.post(_capture_event(name))
        s.wait(lambda: feed(photo) and s.client.status()["classes"].get(name) == 1,
               f"{name} captured")

    def label_after_frame(photo):
        feed(photo)
        return (s.client.status()["prediction"] or {}).get("label")
    s.wait(lambda: label_after_frame("bird.bmp") == "bird", "bird from the browser")
    s.wait(lambda: label_after_frame("cat.bmp") == "cat", "cat from the browser")
    code, answer = s.client.post("/api/camera/frame", b"not a jpeg")
    assert code == 400 and "not a picture" in answer["error"]


def test_the_event_stream_and_the_live_view(studio):
    s = studio(teach=TAUGHT)
    with urllib.request.urlopen(s.url + "api/events", timeout=TIMEOUT) as stream:
        kinds = []
        while "prediction" not in kinds:
            line = stream.readline().decode()
            if line.startswith("event: "):
                kinds.append(line.split(": ", 1)[1].strip())
            elif line.startswith("data: ") and kinds[-1] == "prediction":
                assert set(json.loads(line[6:])["scores"]) == {"cat", "bird"}
        assert kinds[0] == "status"
    with urllib.request.urlopen(s.url + "api/stream.mjpeg", timeout=TIMEOUT) as stream:
        assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        assert stream.readline() == b"--frame\r\n"
        headers = {}
        while True:
            line = stream.readline().strip()
            if not line:
                break
            key, value = line.decode().split(": ", 1)
            headers[key] = value
        jpeg = stream.read(int(headers["Content-Length"]))
    height, width = s.photos.frame_of("cat.bmp").shape[:2]
    assert Image.open(io.BytesIO(jpeg)).size == (width, height)


# -- helpers -----------------------------------------------------------------------------------
def _rgb(sample, name):
    from edge_classifier.frames.images import load_image
    return load_image(sample(name))


def _png_of(rgb) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "PNG")
    return out.getvalue()


def _png(sample, name) -> bytes:
    return _png_of(_rgb(sample, name))


def _capture_event(name):
    from edge_classifier.comms.events import Capture
    return Capture(origin="test", class_name=name)
