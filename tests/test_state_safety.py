"""Nothing taught is lost: the state directory under lost indexes, hostile indexes, a second
process, look-alike names and class limits (store level, synthetic embeddings)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from edge_classifier.core.names import validate_class_name
from edge_classifier.errors import (ClassLimitError, ClassNameError, ReadOnlyStoreError,
                                    StateLockedError, StoreError)
from edge_classifier.learning.state import StateDir
from edge_classifier.learning.store import SampleStore

IDENTITY = {"model": "m", "sha256": "abc", "embedding_dim": 8, "resize": "crop"}


def views(seed, n=2, dim=8):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def filled(root, per_class=20, classes=("apple", "pear", "plum")):
    store = SampleStore(root, backbone=IDENTITY)
    ids = {c: [store.add_sample(c, views(i * 100 + k)) for k in range(per_class)]
           for i, c in enumerate(classes)}
    return store, ids


def on_disk(root):
    return sorted(p.name for p in (root / "samples").rglob("*.npy"))


# -- 1. a lost or stale index rebuilds, never deletes ----------------------------------------
@pytest.mark.parametrize("how", ["deleted", "renamed", "emptied", "garbage"])
def test_a_lost_class_list_keeps_every_sample(tmp_path, how):
    root = tmp_path / "state"
    _, ids = filled(root)
    before = on_disk(root)
    meta = root / "store.json"
    if how == "deleted":
        meta.unlink()
    elif how == "renamed":
        meta.rename(root / "store.json.bak")
    elif how == "emptied":
        meta.write_text('{"format": 1, "classes": []}')
    else:
        meta.write_text("{not json")
    again = SampleStore(root, backbone=IDENTITY)
    assert on_disk(root) == before  # nothing deleted
    assert again.counts() == {c: 20 for c in ids}
    assert {c: again.sample_ids(c) for c in ids} == ids
    assert any("adopted" in p or "rebuilding" in p for p in again.problems)
    assert SampleStore(root, backbone=IDENTITY).problems == []  # the list was written back


def test_a_read_only_open_of_a_lost_list_reads_everything_and_writes_nothing(tmp_path):
    root = tmp_path / "state"
    filled(root)
    (root / "store.json").unlink()
    again = SampleStore(root, backbone=IDENTITY, readonly=True)
    assert len(again) == 60 and not (root / "store.json").exists()
    with pytest.raises(ReadOnlyStoreError):
        again.add_sample("apple", views(1))


def test_a_folder_without_a_name_file_is_left_alone(tmp_path):
    root = tmp_path / "state"
    filled(root, per_class=2)
    stray = root / "samples" / "cdeadbeef0000"
    stray.mkdir()
    np.save(stray / "0000000000000000abcd.npy", views(9))
    again = SampleStore(root, backbone=IDENTITY)
    assert (stray / "0000000000000000abcd.npy").exists()
    assert any("without a readable name file" in p for p in again.problems)


# -- 5. store.json cannot point outside the state ----------------------------------------------
@pytest.mark.parametrize("bad", ["../../victim", "ABSOLUTE", "..", "samples/../../victim", ""])
def test_class_folders_outside_the_state_are_never_touched(tmp_path, bad):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "photo.jpg").write_bytes(b"precious")
    (victim / "x.npy").write_bytes(b"also precious")
    root = tmp_path / "a" / "b" / "state"
    filled(root, per_class=2)
    meta = json.loads((root / "store.json").read_text())
    target = str(victim) if bad == "ABSOLUTE" else bad
    meta["classes"].append({"name": "evil", "dir": target})
    (root / "store.json").write_text(json.dumps(meta))
    store = SampleStore(root, backbone=IDENTITY)
    assert "evil" not in store.classes
    assert any("not a folder of this state" in p for p in store.problems)
    for name in list(store.classes):
        store.delete_class(name)
    assert sorted(p.name for p in victim.iterdir()) == ["photo.jpg", "x.npy"]
    assert (victim / "photo.jpg").read_bytes() == b"precious"


def test_a_symlinked_class_folder_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    np.save(victim / "0000000000000000abcd.npy", views(3))
    root = tmp_path / "state"
    store, _ = filled(root, per_class=1)
    folder = root / "samples" / json.loads((root / "store.json").read_text())["classes"][0]["dir"]
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.symlink_to(victim)
    again = SampleStore(root, backbone=IDENTITY)
    assert again.counts()["apple"] == 0  # nothing outside is read
    assert any("symbolic link" in p for p in again.problems)
    assert (victim / "0000000000000000abcd.npy").exists()


def test_a_class_deleted_while_the_power_fails_does_not_come_back_half(tmp_path):
    root = tmp_path / "state"
    store, _ = filled(root, per_class=3)
    trash = root / "samples" / ".trash-0001"  # what delete_class leaves before its last step
    folder = root / "samples" / store._classes["pear"]
    os.replace(folder, trash)
    again = SampleStore(root, backbone=IDENTITY)
    assert not trash.exists() and again.counts()["pear"] == 0
    assert again.counts()["apple"] == 3


# -- 2. one writer at a time -------------------------------------------------------------------
HOLDER = """
import sys, time
from edge_classifier.learning.state import StateDir
state = StateDir(sys.argv[1], command="edge-classifier run")
print("HELD", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    root = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HELD"
    yield root, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_told_who_holds_the_state(holder):
    root, proc = holder
    with pytest.raises(StateLockedError) as info:
        StateDir(root, command="edge-classifier train")
    message = str(info.value)
    assert f"PID {proc.pid} (edge-classifier run)" in message
    assert "commands" in message  # what to do instead


def test_readers_work_beside_a_writer(holder):
    root, _ = holder
    filled_root = SampleStore(root, backbone=IDENTITY, readonly=True)
    assert len(filled_root) == 0
    assert StateDir(root, write=False).model_name() is None


def test_the_lock_dies_with_its_holder(holder):
    root, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with StateDir(root, command="edge-classifier train") as state:
        assert state.write


def test_two_owners_in_one_process_exclude_each_other_until_closed(tmp_path):
    first = StateDir(tmp_path / "s")
    with pytest.raises(StateLockedError):
        StateDir(tmp_path / "s")
    first.close()
    StateDir(tmp_path / "s").close()


# -- 10. a bounded number of classes -------------------------------------------------------------
def test_new_classes_past_the_limit_are_refused(tmp_path):
    store = SampleStore(tmp_path / "s", backbone=IDENTITY, max_classes=3)
    for name in ("a", "b", "c"):
        store.add_sample(name, views(1))
    with pytest.raises(ClassLimitError, match="head.max_classes"):
        store.add_sample("d", views(2))
    store.add_sample("A", views(3))  # an existing class (any case) is still welcome
    assert store.classes == ["a", "b", "c"] and store.counts()["a"] == 2


# -- 12. look-alike names ------------------------------------------------------------------------
def test_names_differing_in_case_or_unicode_form_are_one_class(tmp_path):
    store = SampleStore(tmp_path / "s", backbone=IDENTITY)
    nfc, nfd = unicodedata.normalize("NFC", "Café"), unicodedata.normalize("NFD", "Café")
    assert nfc != nfd
    store.add_sample(nfc, views(1))
    store.add_sample(nfd, views(2))
    store.add_sample("Apple", views(3))
    store.add_sample("apple", views(4))
    store.add_sample("ＡＰＰＬＥ", views(5))
    assert store.classes == [nfc, "Apple"] and store.counts() == {nfc: 2, "Apple": 3}
    store.add_sample("pear", views(6))
    with pytest.raises(StoreError, match="already exists"):
        store.rename_class("pear", "APPLE")
    assert store.rename_class("Apple", "apple") == "apple"  # a change of case is allowed


@pytest.mark.parametrize("name", ["ｕｎｋｎｏｗｎ", "UNKNOWN", "Unknown", "\u0301\u0302",
                                  "\u200b", "a\u200bb", " ", "\u3000"])
def test_reserved_and_invisible_names_are_refused(name):
    with pytest.raises(ClassNameError):
        validate_class_name(name)


def test_names_are_stored_in_nfc(tmp_path):
    assert validate_class_name(unicodedata.normalize("NFD", "Äpfel")) == "Äpfel"
