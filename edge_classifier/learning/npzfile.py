"""``head.npz`` read the way the state needs it: each array read once, straight from the file
into its own array, and the file's CRC-32 computed on the way::

    with open(path, "rb") as f:
        arrays, crc = read_npz(f)       # name -> array; crc: zlib.crc32 of the whole file

``np.load`` of a 38 MB head (10,000 samples) passes every byte through zipfile's own CRC check
and copies it twice (~22 ms here), and the state then hashed the file once more (SHA-256,
~96 ms). Here the file is read in its order, segment by segment: zip and ``.npy`` headers as
bytes, array data by ``readinto`` into the array that keeps it, one running CRC over all of it
(taken in a thread of its own, a piece behind the reading: the two cost about the same).

What is trusted is checked: stored (uncompressed) members only (an archive cannot inflate),
members inside the file, in order and not overlapping, ``.npy`` headers that parse and
describe exactly the member's bytes, no object arrays. Anything else raises ``ValueError``
(the state reports the head as corrupt and refits it from the samples). Files written by
``np.savez`` are what it reads.
"""

from __future__ import annotations

import io
import math
import os
import queue
import struct
import threading
import zipfile
import zlib
from typing import BinaryIO, Dict, Optional, Tuple

import numpy as np

__all__ = ["read_npz", "write_npz"]

_LOCAL = struct.Struct("<4s2B4HL2L2H")  # a zip local file header (30 bytes)
_MAX_HEADER = 1 << 16  # an .npy header longer than this is not one np.save wrote


def write_npz(f: BinaryIO, arrays: Dict[str, np.ndarray]) -> None:
    """``np.savez(f, **arrays)`` (the same archive: stored members ``NAME.npy``, zip64 headers),
    each array's bytes written from the array itself: ``np.savez`` writes a zip member through
    copies of up to 16 MiB of it (the 8 MB system of a 1,024-landmark head at once)."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            array = np.asanyarray(value)
            if array.dtype.hasobject:
                raise ValueError(f"array {name!r} holds Python objects")
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(
                    member, np.lib.format.header_data_from_array_1_0(array))
                if array.size:
                    member.write(_raw_bytes(array))


def _raw_bytes(array: np.ndarray) -> np.ndarray:
    """The bytes of ``array`` in the order its ``.npy`` header gives (uint8, a view where the
    array lies in one piece: Fortran order is written as it lies, as ``np.save`` does)."""
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        array = array.T
    elif not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array.reshape(-1).view(np.uint8)


def read_npz(f: BinaryIO) -> Tuple[Dict[str, np.ndarray], int]:
    """(name -> array, CRC-32 of the whole file) of the ``.npz`` open in ``f`` (binary, seekable);
    ``ValueError`` if it is not a plain ``.npz`` of numeric arrays."""
    try:
        size = os.fstat(f.fileno()).st_size
    except (AttributeError, OSError):  # io.UnsupportedOperation (BytesIO) is an OSError
        size = f.seek(0, io.SEEK_END)
    try:
        with zipfile.ZipFile(f) as archive:  # reads the central directory only
            infos = sorted(archive.infolist(), key=lambda i: i.header_offset)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a zip archive: {exc}") from None
    reader = _Reader(f, size)
    try:
        arrays = _members(reader, infos, size)
    finally:
        crc = reader.crc.result()  # (and the CRC's thread is done, whatever happened)
    return arrays, crc


def _members(reader: "_Reader", infos, size: int) -> Dict[str, np.ndarray]:
    arrays: Dict[str, np.ndarray] = {}
    for info in infos:
        what = repr(info.filename)
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ValueError(f"member {what} is compressed (heads are stored plain)")
        if info.header_offset < reader.pos:
            raise ValueError(f"member {what} overlaps the one before it")
        reader.bytes(info.header_offset - reader.pos)  # nothing, in a file np.savez wrote
        fields = _LOCAL.unpack(reader.bytes(_LOCAL.size))
        if fields[0] != b"PK\x03\x04":
            raise ValueError(f"member {what} has no local header")
        reader.bytes(fields[10] + fields[11])  # its name and extra field
        end = reader.pos + info.file_size
        if end > size:
            raise ValueError(f"member {what} runs past the end of the file")
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        arrays[name] = _npy(reader, end, what)
    reader.bytes(size - reader.pos)  # the central directory
    return arrays


class _RunningCrc:
    """The CRC-32 of buffers given in order. From the first large one on it is computed in a
    thread of its own (zlib lets go of the GIL), while the next part of the file is read: the
    two took about as long as each other, one after the other (10 + 10 ms for the 17 MB head of
    10,000 samples here)."""

    LARGE = 1 << 20

    def __init__(self) -> None:
        self.crc = 0
        self._queue: "Optional[queue.SimpleQueue]" = None
        self._thread: Optional[threading.Thread] = None

    def add(self, data) -> None:
        if self._queue is None:
            if len(data) < self.LARGE:
                self.crc = zlib.crc32(data, self.crc)
                return
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="head-crc", daemon=True)
            self._thread.start()
        self._queue.put(data)

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            self.crc = zlib.crc32(data, self.crc)

    def result(self) -> int:
        """The CRC of everything given (waits for the thread, which then ends)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None
        return self.crc


class _Reader:
    """Sequential reads of ``f`` from its start, with the running CRC-32 of what was read
    (``crc.result()``); arrays are read a piece at a time, each piece's CRC taken while the
    next is read."""

    PIECE = 1 << 20

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size, self.pos, self.crc = f, size, 0, _RunningCrc()
        f.seek(0)

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise ValueError("the file is shorter than its directory says")
        data = self.f.read(n)
        if len(data) != n:
            raise EOFError("the file shrank while it was read")
        self.pos += n
        self.crc.add(data)
        return data

    def into(self, array: np.ndarray) -> None:
        view = memoryview(array).cast("B") if array.size else memoryview(b"")
        done = 0
        while done < len(view):
            piece = view[done:done + self.PIECE]
            got = 0
            while got < len(piece):
                n = self.f.readinto(piece[got:])
                if not n:
                    raise EOFError("the file shrank while it was read")
                got += n
            self.crc.add(piece)  # no other write reaches it: the array is new
            done += got
        self.pos += done


def _npy(reader: _Reader, end: int, what: str) -> np.ndarray:
    start = reader.pos
    prefix = reader.bytes(min(10, end - start))
    if len(prefix) < 10 or prefix[:6] != b"\x93NUMPY" or prefix[6] not in (1, 2):
        raise ValueError(f"member {what} is not an .npy array")
    if prefix[6] == 1:
        length = struct.unpack("<H", prefix[8:10])[0]
    else:
        prefix += reader.bytes(min(2, end - reader.pos))
        length = struct.unpack("<I", prefix[8:12])[0] if len(prefix) == 12 else -1
    if not 0 <= length <= min(_MAX_HEADER, end - reader.pos):
        raise ValueError(f"member {what}: its .npy header is too long")
    header = io.BytesIO(prefix + reader.bytes(length))
    try:
        version = np.lib.format.read_magic(header)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(header)
    except (ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise ValueError(f"member {what} is not an .npy array ({exc})") from None
    if dtype.hasobject:
        raise ValueError(f"member {what} holds Python objects")
    if reader.pos + math.prod(shape) * dtype.itemsize != end:  # exact: no wrap-around
        raise ValueError(f"member {what}: its header does not match its size")
    flat = np.empty(math.prod(shape), dtype)
    reader.into(flat)
    return flat.reshape(shape, order="F" if fortran else "C")  # a view, either order
