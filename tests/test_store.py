"""The sample store: durable samples, class operations, recovery, bad input, full disks."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from fsfaults import needs_root, read_only

from edge_classifier.errors import (ClassNameError, ReadOnlyStoreError, StorageFullError,
                                    StoreError, UnknownClassError)
from edge_classifier.learning.store import SampleStore

IDENTITY = {"model": "m", "sha256": "abc", "embedding_dim": 8, "resize": "crop"}


def views(seed, n=2, dim=8):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.fixture
def store(tmp_path):
    return SampleStore(tmp_path / "state", backbone=IDENTITY)


def test_samples_survive_reopening(store, tmp_path):
    a = store.add_sample("apple", views(1), np.zeros((240, 320, 3), np.uint8))
    store.add_sample("pear", views(2))
    again = SampleStore(tmp_path / "state", backbone=IDENTITY)
    assert again.classes == ["apple", "pear"]
    np.testing.assert_array_equal(again.views("apple", a), views(1))
    assert again.problems == []
    thumb = again.thumbnail_path("apple", a)
    from PIL import Image
    assert min(Image.open(thumb).size) == 224  # downscaled to the thumbnail size


def test_the_fingerprint_is_the_digest_saved_heads_were_paired_with(store):
    """The samples' fingerprint is saved with the head and compared at every start: the same
    SHA-256 stream as always (a changed value would refit every saved head once)."""
    import hashlib
    store.add_sample("apple", views(1))
    store.add_sample("pear", views(2))
    store.add_sample("apple", views(3))
    store.add_class("quince")  # no samples
    digest = hashlib.sha256(json.dumps(IDENTITY, sort_keys=True).encode())
    for name in store.classes:
        digest.update(name.encode() + b"\0")
        for sid in store.sample_ids(name):
            digest.update(sid.encode())
    assert store.fingerprint() == digest.hexdigest()[:16]
    before = store.fingerprint()
    store.remove_sample("apple", store.sample_ids("apple")[0])
    assert store.fingerprint() != before


def test_samples_matrix_has_one_row_per_sample_with_its_views(store):
    store.add_sample("a", views(1, 3))
    store.add_sample("b", views(2, 3))
    store.add_sample("b", views(3, 2))  # fewer views: every sample is cut to two
    V, y, names = store.samples_matrix()
    assert V.shape == (3, 2, 8) and y.tolist() == [0, 1, 1] and names == ["a", "b"]
    np.testing.assert_array_equal(V[0], views(1, 3)[:2])


def test_delete_last_removes_the_newest(store, tmp_path):
    first = store.add_sample("a", views(1))
    second = store.add_sample("a", views(2))
    assert store.delete_last("a") == second
    assert store.sample_ids("a") == [first]
    assert SampleStore(tmp_path / "state", backbone=IDENTITY).sample_ids("a") == [first]


def test_sample_ids_sort_in_capture_order_even_if_the_clock_goes_back(store, monkeypatch):
    import time
    ids = [store.add_sample("a", views(i)) for i in range(3)]
    monkeypatch.setattr(time, "time_ns", lambda: 5)  # a Pi without RTC before NTP sync
    ids.append(store.add_sample("a", views(9)))
    assert sorted(ids) == ids == store.sample_ids("a")


def test_rename_keeps_samples(store, tmp_path):
    sid = store.add_sample("aple", views(1))
    store.rename_class("aple", "apple")
    again = SampleStore(tmp_path / "state", backbone=IDENTITY)
    assert again.classes == ["apple"] and again.sample_ids("apple") == [sid]


def test_rename_onto_an_existing_class_is_refused(store):
    store.add_sample("a", views(1))
    store.add_sample("b", views(2))
    with pytest.raises(StoreError, match="already exists"):
        store.rename_class("a", "b")
    assert store.counts() == {"a": 1, "b": 1}


def test_delete_and_clear_class(store, tmp_path):
    store.add_sample("a", views(1))
    store.add_sample("b", views(2))
    store.add_sample("b", views(3))
    store.delete_class("a")
    assert store.clear_class("b") == 2
    again = SampleStore(tmp_path / "state", backbone=IDENTITY)
    assert again.counts() == {"b": 0}
    assert len(os.listdir(tmp_path / "state" / "samples")) == 1


def test_unknown_class_and_sample(store):
    with pytest.raises(UnknownClassError, match="no class 'x'"):
        store.delete_last("x")
    store.add_sample("a", views(1))
    with pytest.raises(UnknownClassError, match="no sample"):
        store.remove_sample("a", "nope")


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "tab\there", "nul\0", " pad",
                                  "x" * 65, "unknown", "back\\slash", "\u202eevil"])
def test_bad_class_names_are_refused(store, name):
    with pytest.raises(ClassNameError):
        store.add_sample(name, views(1))
    assert store.classes == []


def test_unicode_class_names_are_fine(store, tmp_path):
    store.add_sample("Äpfel 🍎", views(1))
    assert SampleStore(tmp_path / "state", backbone=IDENTITY).classes == ["Äpfel 🍎"]


@pytest.mark.parametrize("bad", [np.full((1, 8), np.nan), np.ones((1, 5)), np.ones((0, 8))])
def test_bad_embeddings_are_refused(store, bad):
    with pytest.raises(StoreError):
        store.add_sample("a", bad)
    assert len(store) == 0


def test_other_backbone_is_refused(store, tmp_path):
    store.add_sample("a", views(1))
    other = dict(IDENTITY, sha256="def", model="other")
    with pytest.raises(StoreError, match="embedded with m, not other"):
        SampleStore(tmp_path / "state", backbone=other)


def test_corrupt_sample_is_skipped_and_reported(store, tmp_path):
    keep = store.add_sample("a", views(1))
    bad = store.add_sample("a", views(2))
    path = next((tmp_path / "state" / "samples").glob(f"*/{bad}.npy"))
    path.write_bytes(path.read_bytes()[:40])  # truncated
    again = SampleStore(tmp_path / "state", backbone=IDENTITY)
    assert again.sample_ids("a") == [keep]
    assert any(bad in p and "unreadable" in p for p in again.problems)


def test_lost_class_list_is_rebuilt_from_folders(store, tmp_path):
    sid = store.add_sample("apple", views(1))
    (tmp_path / "state" / "store.json").write_text("{ not json")
    again = SampleStore(tmp_path / "state", backbone=IDENTITY)
    assert again.classes == ["apple"] and again.sample_ids("apple") == [sid]
    assert any("store.json" in p for p in again.problems)
    json.loads((tmp_path / "state" / "store.json").read_text())  # rewritten


def test_stray_temporary_files_are_cleaned(store, tmp_path):
    store.add_sample("a", views(1))
    folder = next((tmp_path / "state" / "samples").iterdir())
    (folder / ".tmp-123.npy.x").write_bytes(b"half")
    (folder / "0000000000000001abcd.jpg").write_bytes(b"orphan thumbnail")
    SampleStore(tmp_path / "state", backbone=IDENTITY)
    assert sorted(p.suffix for p in folder.iterdir()) == ["", ".npy"]


@pytest.fixture
def small_fs(tmp_path):
    """A real 256 KiB tmpfs (root only: see fsfaults.needs_root)."""
    mounts = []

    def make(size="256k"):
        point = tmp_path / f"fs{len(mounts)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                       check=True)
        mounts.append(point)
        return point
    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


@needs_root
def test_full_disk_refuses_the_sample_and_keeps_the_rest(small_fs):
    root = small_fs("256k") / "state"
    store = SampleStore(root, backbone=IDENTITY)
    thumb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    acked = []
    with pytest.raises(StorageFullError, match="disk full"):
        for i in range(1000):
            acked.append(store.add_sample("a", views(i), thumb))
    assert 3 < len(acked) < 1000
    again = SampleStore(root, backbone=IDENTITY)
    assert again.sample_ids("a") == acked  # everything acknowledged is intact
    for i, sid in enumerate(acked):
        np.testing.assert_array_equal(again.views("a", sid), views(i))
    assert not list(root.rglob(".tmp-*"))


def test_read_only_state_directory(tmp_path):
    store = SampleStore(tmp_path / "state", backbone=IDENTITY)
    keep = store.add_sample("a", views(1))
    with read_only(tmp_path / "state"):  # chmod for a user, a read-only mount for root
        with pytest.raises(ReadOnlyStoreError, match="not stored"):
            store.add_sample("a", views(2))
        with pytest.raises(ReadOnlyStoreError):
            store.add_class("b")
    assert store.sample_ids("a") == [keep] and store.classes == ["a"]


def test_export_folders(store, tmp_path):
    store.add_sample("a", views(1), np.full((30, 40, 3), 200, np.uint8))
    store.add_sample("b", views(2))  # no thumbnail: nothing to export
    assert store.export_folders(tmp_path / "out") == 1
    assert len(list((tmp_path / "out" / "a").glob("*.jpg"))) == 1


@pytest.mark.parametrize("array", [
    np.arange(2 * 1024, dtype=np.float32).reshape(2, 1024) / 7,
    np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.arange(20 * 1024, dtype=np.float32).reshape(20, 1024),  # beyond the first read
    np.ones((1, 5), np.float16),
])
def test_a_sample_file_reads_back_exactly_as_np_load_reads_it(tmp_path, array):
    from edge_classifier.learning.store_disk import load_views
    path = tmp_path / "s.npy"
    np.save(path, array)
    got = load_views(path)
    assert got.dtype == np.float32 and got.flags.writeable and got.flags.owndata
    np.testing.assert_array_equal(got, np.load(path).astype(np.float32))


@pytest.mark.parametrize("content, message", [
    (b"", "no magic"),
    (b"\x93NUMPY\x01\x00\x76\x00{'descr'", "truncated .npy header"),
    (b"PK\x03\x04" + b"\0" * 200, "no magic"),
    (b"\x93NUMPY\x03\x00" + b"\0" * 100, "format (3, 0)"),
])
def test_a_damaged_sample_file_is_a_clear_value_error(tmp_path, content, message):
    from edge_classifier.learning.store_disk import load_views
    path = tmp_path / "s.npy"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_views(path)


@pytest.mark.parametrize("array, message", [
    (np.zeros(4, np.float32), "not a VxD float array"),
    (np.zeros((2, 3), np.int32), "not a VxD float array"),
    (np.zeros((0, 3), np.float32), "not a VxD float array"),
    (np.array([[1.0, np.nan]], np.float32), "NaN or infinity"),
])
def test_a_sample_file_of_the_wrong_kind_is_refused(tmp_path, array, message):
    from edge_classifier.learning.store_disk import load_views
    path = tmp_path / "s.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=message):
        load_views(path)
    data = path.read_bytes()
    path.write_bytes(data + b"\0\0\0\0")  # more bytes than its header says
    with pytest.raises(ValueError):
        load_views(path)


def test_a_sample_whose_header_claims_more_than_a_sample_holds_is_not_read(tmp_path):
    from edge_classifier.learning import store_disk
    path = tmp_path / "s.npy"
    np.save(path, np.zeros((64, 4096 * 20), np.float32))  # 21 MB: consistent, but no sample
    with pytest.raises(ValueError, match="more than a sample holds"):
        store_disk.load_views(path)
