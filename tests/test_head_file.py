"""head.npz read straight into its arrays with one running CRC (learning/npzfile.py): the same
arrays as np.load, a corrupted byte or a file of another save is noticed (the head is refitted,
never trusted), hostile archives are refused, and heads saved with the former SHA-256 digest
still load."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest

from edge_classifier.errors import HeadLoadError
from edge_classifier.learning.npzfile import read_npz
from edge_classifier.learning.state import StateDir

ARRAYS = {"L": np.arange(12, dtype=np.float32).reshape(3, 4), "P": np.eye(3),
          "points": np.full((5, 4), 0.5, np.float16), "y": np.arange(5),
          "empty": np.zeros((0, 4)), "F": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
          "scalar": np.float64(2.5)}
META = {"edge_classifier": {"head": "auto"}}


def npz_bytes(arrays=ARRAYS, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    if compression == zipfile.ZIP_STORED:
        np.savez(buf, **arrays)
    else:
        np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def saved(tmp_path, arrays=ARRAYS):
    root = tmp_path / "state"
    with StateDir(root) as state:
        state.save_head(arrays, META)
    return root


def test_the_arrays_are_those_np_load_gives_and_the_crc_is_the_files(tmp_path):
    data = npz_bytes()
    (tmp_path / "h.npz").write_bytes(data)
    with open(tmp_path / "h.npz", "rb") as f:
        arrays, crc = read_npz(f)
    assert crc == zlib.crc32(data)
    with np.load(io.BytesIO(data)) as expected:
        assert sorted(arrays) == sorted(expected.files)
        for name in expected.files:
            assert arrays[name].dtype == expected[name].dtype
            assert np.array_equal(arrays[name], expected[name]), name
    assert arrays["F"].flags.f_contiguous and arrays["P"].flags.writeable


BIG = {"P": np.arange(430_001, dtype=np.float64).reshape(-1, 1), "y": np.arange(7),  # 3.4 MB
       "L": np.full((1100, 333), 0.25, np.float32), "tail": np.arange(3.0)}  # 1.5 MB


def _crc_threads():
    import threading
    return [t for t in threading.enumerate() if t.name == "head-crc"]


def test_the_crc_of_a_large_head_taken_beside_the_reading_is_the_files(tmp_path):
    data = npz_bytes(BIG)
    (tmp_path / "h.npz").write_bytes(data)
    with open(tmp_path / "h.npz", "rb") as f:
        arrays, crc = read_npz(f)
    assert crc == zlib.crc32(data) and not _crc_threads()  # and its thread is done
    for name, value in BIG.items():
        assert np.array_equal(arrays[name], value), name
    for at in (len(data) // 3, len(data) // 3 + (1 << 20), len(data) - 200):  # in each piece
        damaged = bytearray(data)
        damaged[at] ^= 0x40
        (tmp_path / "h.npz").write_bytes(bytes(damaged))
        with open(tmp_path / "h.npz", "rb") as f:
            assert read_npz(f)[1] != crc, at


def test_a_large_head_that_shrinks_while_it_is_read_leaves_no_thread_behind(tmp_path):
    data = npz_bytes(BIG)

    class Shrinking(io.BytesIO):  # ends in the middle of P's data, after the thread started
        def readinto(self, b):
            return 0 if self.tell() > 2_500_000 else super().readinto(b)
    with pytest.raises(EOFError, match="shrank"):
        read_npz(Shrinking(data))
    assert not _crc_threads()


def test_a_saved_head_loads_back_exactly(tmp_path):
    root = saved(tmp_path)
    arrays, meta = StateDir(root, write=False).load_head_files()
    assert meta["edge_classifier"] == META["edge_classifier"] and "arrays_crc32" in meta
    # written straight into the file, its CRC-32 read back from it: the whole file's
    assert meta["arrays_crc32"] == f"{zlib.crc32((root / 'head.npz').read_bytes()):08x}"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary left
    for name, value in ARRAYS.items():
        assert np.array_equal(arrays[name], value)


def test_a_flipped_byte_in_the_arrays_is_noticed_and_the_head_refitted(tmp_path):
    root = saved(tmp_path, {"P": np.eye(64)})
    path = root / "head.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside P's data: still a valid archive and a finite array
    path.write_bytes(bytes(data))
    assert StateDir(root, write=False).load_head_files() is None  # not trusted: refit


def test_the_arrays_of_another_save_are_not_taken(tmp_path):
    root = saved(tmp_path)
    other = saved(tmp_path / "other", {"P": np.eye(3) * 2})
    (root / "head.npz").write_bytes((other / "head.npz").read_bytes())
    assert StateDir(root, write=False).load_head_files() is None


def test_a_head_saved_with_the_former_sha256_digest_still_loads(tmp_path):
    root = saved(tmp_path)
    data = (root / "head.npz").read_bytes()
    meta = json.loads((root / "head.json").read_text())
    del meta["arrays_crc32"]
    meta["arrays_sha256"] = hashlib.sha256(data).hexdigest()
    (root / "head.json").write_text(json.dumps(meta))
    arrays, _ = StateDir(root, write=False).load_head_files()
    assert np.array_equal(arrays["L"], ARRAYS["L"])
    meta["arrays_sha256"] = "0" * 64
    (root / "head.json").write_text(json.dumps(meta))
    assert StateDir(root, write=False).load_head_files() is None


@pytest.mark.parametrize("damage, message", [
    (lambda d: npz_bytes(compression=zipfile.ZIP_DEFLATED), "is compressed"),
    (lambda d: d[:len(d) // 2], "not a zip archive"),  # truncated: no central directory
    (lambda d: d[:-1], "not a zip archive"),
    (lambda d: b"not a zip at all" * 100, "not a zip archive"),
    (lambda d: _patched_header(d, b"'descr': '<f8'", b"'descr': '|O' "), "holds Python objects"),
    (lambda d: _patched_header(d, b"'shape': (3, 3)", b"'shape': (3, 4)"), "does not match"),
    (lambda d: _patched_header(d, b"'shape': (3, 3)", b"'shape': (999,)"), "does not match"),
    (lambda d: d.replace(b"\x93NUMPY", b"\x93NOPEY", 1), "is not an .npy array"),
    (lambda d: _overlapping(), "overlaps"),
])
def test_hostile_or_broken_archives_are_refused_in_one_line(tmp_path, damage, message):
    root = saved(tmp_path, {"P": np.eye(3)})
    (root / "head.npz").write_bytes(damage((root / "head.npz").read_bytes()))
    with pytest.raises(HeadLoadError, match="corrupt or incomplete") as info:
        StateDir(root, write=False).load_head_files()
    assert message in str(info.value) and "\n" not in str(info.value)


def _patched_header(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with one .npy header's text replaced (same length: the archive stays valid
    apart from zip's own CRC, which the reader does not consult)."""
    assert len(old) == len(new) and old in data
    return data.replace(old, new, 1)


def _overlapping() -> bytes:
    """An archive whose second directory entry points into the first member's data."""
    data = bytearray(npz_bytes({"a": np.zeros(64), "b": np.zeros(64)}))
    directory = data.rfind(b"PK\x01\x02")  # the last central directory entry ("b")
    struct.pack_into("<L", data, directory + 42, 40)  # its local header offset: inside "a"
    return bytes(data)
