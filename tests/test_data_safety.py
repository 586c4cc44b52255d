"""Nothing taught is lost, end to end on the real model: kill -9 during ``train``, a second
process on a state, a disk that cannot take the head, class limits at import, commands that
race a multi-count capture, a multi-label state under ``run``, the last good config."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from devicekit import make_config
from PIL import Image

from edge_classifier import cli
from edge_classifier.comms import events as ev
from edge_classifier.config import HeadConfig
from edge_classifier.datasets.embedcache import _read, cache_folder, embed_files
from edge_classifier.errors import StateLockedError
from edge_classifier.learning.augment import Augmentation
from edge_classifier.learning.state import IMPORTS, StateDir
from edge_classifier.learning.store import SampleStore

PHOTOS = {"bird": "bird.bmp", "cat": "cat.bmp", "food": "hot_dog.jpg"}


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def many(models_dir, tmp_path_factory):
    """70 different 160x120 crops per class of three sample photos: a folder data set."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(1)
    for cls, photo in PHOTOS.items():
        image = Image.open(models_dir / photo).convert("RGB")
        w, h = image.size
        (root / cls).mkdir()
        for i in range(70):
            s = rng.uniform(0.5, 0.95)
            cw, ch = int(w * s), int(h * s)
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            image.crop((x, y, x + cw, y + ch)).resize((160, 120)).save(root / cls / f"{i}.jpg")
    return root


def train_process(dataset, state, home):
    env = dict(os.environ, EDGE_CLASSIFIER_HOME=str(home))
    return subprocess.Popen([sys.executable, "-m", "edge_classifier", "train", str(dataset),
                             "--state", str(state), "-q", "--threads", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def journal_lines(state):
    try:
        return (state / IMPORTS).read_text().count("\n")
    except OSError:
        return 0


def kill_when(proc, ready, limit=120.0):
    """SIGKILL ``proc`` as soon as ``ready()``; True if it was killed before finishing."""
    import threading
    gate = threading.Event()
    waited = 0.0
    while proc.poll() is None and waited < limit:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        gate.wait(0.002)  # polling a condition; nothing here asserts a duration
        waited += 0.002
    return False


# -- 3. kill -9 during train resumes: no duplicates, no repeated embedding ---------------------
def test_kill_9_during_train_resumes_without_duplicates(many, tmp_path, models_dir, capsys,
                                                        monkeypatch):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for f in models_dir.iterdir():
        (home / "models" / f.name).symlink_to(f)
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(home))
    state = tmp_path / "state"
    files = sorted(many.rglob("*.jpg"))
    kills_mid_store = 0
    # round 0: killed while embedding (a cache shard exists); then three kills while storing
    proc = train_process(many, state, home)
    killed = kill_when(proc, lambda: any((home / "cache").rglob("*.npz")))
    assert killed, proc.stderr.read()
    from edge_classifier.backbone.model import Backbone
    backbone = Backbone.from_name(None, num_threads=1)
    folder = cache_folder(backbone, Augmentation())
    cached = len(_read(folder)[0])
    assert 0 < cached < len(files)
    for target in (20, 90, 160):
        proc = train_process(many, state, home)
        if kill_when(proc, lambda: journal_lines(state) >= target):
            kills_mid_store += journal_lines(state) < len(files)
    assert kills_mid_store >= 2  # the kills really happened in the middle of storing
    code, out, err = run(capsys, "train", many, "--state", state, "-q")
    assert code == 0, err
    store = SampleStore(state, backbone=backbone.identity)
    assert store.counts() == {"bird": 70, "cat": 70, "food": 70}  # each file exactly once
    assert store.problems == []
    imported = StateDir(state, write=False).read_imports()
    assert sorted(imported) == sorted(str(f) for f in files)
    assert len({v["id"] for v in imported.values()}) == len(files)
    # no embedding work is repeated: a rerun embeds nothing
    calls = Counter()
    real = backbone.run_prepared

    def counting(pixels):
        calls["invoke"] += 1
        return real(pixels)
    monkeypatch.setattr(backbone, "run_prepared", counting)
    _, ok, _ = embed_files(backbone, [str(f) for f in files], Augmentation())
    assert ok.all() and calls["invoke"] == 0


# -- 2. one writer: train beside a running device, two devices ----------------------------------
def test_train_beside_a_running_device_is_refused_and_predict_works(many, tmp_path, capsys,
                                                                    device_factory, sample):
    state = tmp_path / "state"
    device = device_factory(make_config(), state=state)
    device.learner.capture("bird", device.source.read())
    device.learner.save()
    code, _, err = run(capsys, "train", many, "--state", state, "-q")
    assert code == 1 and f"PID {os.getpid()} (edge-classifier run)" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "predict", sample("bird.bmp"), "--state", state, "--json")
    assert code == 0, err
    with pytest.raises(StateLockedError, match="edge-classifier run"):
        device_factory(make_config(), state=state)
    assert SampleStore(state, readonly=True).counts() == {"bird": 1, "cat": 0}


def fill_up(path):
    """Write ``path`` until the disk takes not one more byte."""
    try:
        with open(path, "wb") as f:
            for chunk in (65536, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                        f.flush()
                except OSError:
                    pass
    except OSError:
        pass


# -- 4. a disk that cannot take the head does not stop the device -------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a full tmpfs, which needs root (CI is root)")
def test_device_starts_and_predicts_when_the_head_cannot_be_saved(tmp_path, device_factory,
                                                                  caplog):
    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(point)], check=True)
    try:
        device = device_factory(make_config(), state=point / "state")
        frame = device.source.read()
        for _ in range(3):
            device.learner.capture("bird", frame)
            device.learner.capture("cat", device.source.read())
        device.close()
        for name in ("head.npz", "head.json"):
            (point / "state" / name).unlink(missing_ok=True)
        fill_up(point / "filler")
        with caplog.at_level(logging.WARNING, logger="edge_classifier"):
            again = device_factory(make_config(), state=point / "state")
        assert "refitted from the samples at every start" in caplog.text
        again.step(again.source.read())
        assert again.last_prediction.label in ("bird", "cat", "unknown")
        assert again.store.counts() == {"bird": 3, "cat": 3}
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


# -- 6. the class limit holds at import, and every drop is logged and answered -----------------
def test_train_respects_the_class_limit_and_says_so(many, tmp_path, capsys):
    state = tmp_path / "state"
    code, out, err = run(capsys, "train", many, "--state", state, "-q",
                         "--max-samples-per-class", "25")
    assert code == 0, err
    assert "25 samples added" not in out and "75 samples added" in out
    assert err.count("is full (25 samples): 45 files not imported") == 3
    assert "--max-samples-per-class" in err
    assert SampleStore(state, readonly=True).counts() == {"bird": 25, "cat": 25, "food": 25}


def test_a_capture_over_the_limit_logs_and_reports_what_it_dropped(device_factory, caplog):
    config = make_config()
    config = config.replace(head=HeadConfig(max_samples_per_class=4))
    device = device_factory(config)
    frame = device.source.read()
    for _ in range(4):
        device.learner.capture("bird", frame)
    answers = []
    device.bus.answer = lambda event, result: answers.append(result) or True
    device.post(ev.Capture(origin="test", class_name="bird"))
    with caplog.at_level(logging.WARNING, logger="edge_classifier"):
        device.apply_events()
        device.step(frame)
    assert "over head.max_samples_per_class (4): dropped 2" in caplog.text
    assert answers[-1]["ok"] and answers[-1]["dropped"] == 2 and answers[-1]["samples"] == 3
    assert device.stats()["dropped_samples"] == 2


# -- 7. commands racing a multi-count capture ----------------------------------------------------
def test_delete_class_during_a_long_capture_cancels_the_rest(device_factory):
    device = device_factory(make_config())
    answers = []
    device.bus.answer = lambda event, result: answers.append(result) or True
    device.post(ev.Capture(origin="mqtt", class_name="toy", count=40))
    for _ in range(3):
        device.apply_events()
        device.step(device.source.read())
    device.post(ev.DeleteClass(origin="mqtt", class_name="toy"))
    for _ in range(10):
        device.apply_events()
        device.step(device.source.read())
    assert "toy" not in device.store.classes
    assert [a["action"] for a in answers] == ["capture", "delete_class"]
    assert not answers[0]["ok"] and "deleted" in answers[0]["error"] and answers[1]["ok"]
    on_disk = [(f.parent / "name").read_text() for f in device.store.root.glob("samples/*/name")]
    assert "toy" not in on_disk


def test_rename_during_a_long_capture_moves_the_rest_along(device_factory):
    device = device_factory(make_config())
    device.post(ev.Capture(origin="mqtt", class_name="toy", count=10))
    for _ in range(3):
        device.apply_events()
        device.step(device.source.read())
    device.post(ev.RenameClass(origin="mqtt", class_name="toy", new_name="robot"))
    for _ in range(12):
        device.apply_events()
        device.step(device.source.read())
    assert "toy" not in device.store.classes and device.store.counts()["robot"] == 10


# -- 10. a flood of new class names stops at head.max_classes ------------------------------------
def test_a_flood_of_new_class_names_is_bounded(device_factory):
    config = make_config().replace(head=HeadConfig(max_classes=8))
    device = device_factory(config)
    frame = device.source.read()
    for i in range(300):
        device.post(ev.Capture(origin="mqtt", class_name=f"spam{i}"))
    for _ in range(300):
        device.apply_events()
        device.step(frame)
    assert len(device.store.classes) == 8  # bird and cat of the config, and 6 new
    assert device.counters.capture_errors == 300 - 6


# -- 8 (architecture). the multi-label state keeps its head under run ---------------------------
def test_a_multilabel_state_keeps_its_head_under_the_device(many, tmp_path, capsys,
                                                            device_factory):
    csv = tmp_path / "labels.csv"
    rows = [f"{many}/bird/{i}.jpg,bird;outdoor" for i in range(6)] + \
           [f"{many}/cat/{i}.jpg,cat" for i in range(6)]
    csv.write_text("\n".join(rows) + "\n")
    state = tmp_path / "state"
    code, _, err = run(capsys, "train", csv, "--state", state, "-q")
    assert code == 0, err
    device = device_factory(make_config(), state=state)
    assert device.learner.head_name == "multilabel" and device.learner.multilabel
    device.step(device.source.read())
    device.close()
    meta = json.loads((state / "head.json").read_text())
    assert meta["edge_classifier"]["head"] == "multilabel"
    with pytest.raises(Exception, match="multi-label"):
        device_factory(make_config().replace(head=HeadConfig(name="auto")), state=state)


# -- 17. the last good config is one that started ------------------------------------------------
def test_a_config_that_fails_to_start_is_not_kept_as_the_last_good_one(tmp_path, capsys,
                                                                       sample):
    state = tmp_path / "state"
    bad = tmp_path / "bad.toml"
    bad.write_text(f'state_dir = "{state}"\nkeyboard = "off"\n[source]\nkind = "replay"\n'
                   f'path = "{tmp_path / "no-such-folder"}"\n')
    assert cli.main(["run", "--config", str(bad), "--frames", "1"]) != 0
    assert not (state / "config.last-good.toml").exists()
    good = tmp_path / "good.toml"
    good.write_text(f'state_dir = "{state}"\nkeyboard = "off"\n[source]\nkind = "replay"\n'
                    f'path = "{sample("cat.bmp")}"\n')
    assert cli.main(["run", "--config", str(good), "--frames", "2"]) == 0
    assert Path(state / "config.last-good.toml").read_text() == good.read_text()
    capsys.readouterr()


# -- 9. the unknown score itself is published -------------------------------------------------
def test_predictions_carry_the_unknown_score_and_its_threshold(many, tmp_path, capsys, sample,
                                                               device_factory):
    state = tmp_path / "state"
    assert run(capsys, "train", many, "--state", state, "-q")[0] == 0
    code, out, _ = run(capsys, "predict", sample("cat.bmp"), sample("sunflower.bmp"),
                       "--state", state, "--json")
    cat, sunflower = json.loads(out)["results"]
    for r in (cat, sunflower):
        assert r["unknown"] == (r["unknown_score"] > r["unknown_threshold"])
    assert cat["unknown_score"] < sunflower["unknown_score"]
    published = []
    device = device_factory(make_config(), state=state)
    device.bus.publish_prediction = published.append
    device.step(device.source.read())
    assert {"unknown_score", "unknown_threshold", "closest"} <= set(published[-1])
