"""The backbone: a TFLite image model, loaded once, that turns a frame into an embedding.

Any TFLite image model works: uint8, int8 or float32 input, quantised or float outputs. An
embedding extractor's output is the embedding; for a classifier the layer before its last
fully-connected layer is exposed as a second output (see :mod:`edge_classifier.backbone.graph`), so one
invoke yields both the embedding and the class scores::

    backbone = Backbone.from_name("mobilenet_v2_1.0_224_quant")
    result = backbone.run(load_image("parrot.jpg"))
    result.embedding.shape            # (1280,)
    backbone.top_k(result.scores, 1)  # [('macaw', 0.97...)]

The interpreter is created once, never per frame. Not thread-safe: use one backbone per thread.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from edge_classifier.backbone import graph, integrity, runtime
from edge_classifier.backbone.resize import TfliteResize, make_resample, with_resize
from edge_classifier.backbone.manifest import Manifest, load_manifest
from edge_classifier.errors import (EdgeClassifierError, InvalidModelError, ModelError,
                                    ModelNotInstalledError)
from edge_classifier.frames.images import preprocess, resize_box
from edge_classifier.frames.region import Crop, check_crop

_log = logging.getLogger(__name__)

#: Frames of one shape in a row before run_frame builds the model that resizes them itself
#: (~0.1 s, paid back after ~250 frames of 0.44 ms saved; a camera's stream never changes).
STREAM_AFTER = 30
#: Build that model in a thread of its own (tests turn it off to build it at once).
BUILD_IN_BACKGROUND = True

# MobileNet's training normalisation: pixels mapped to [-1, 1].
PIXEL_MEAN = 127.5
PIXEL_STD = 127.5


@dataclass(frozen=True)
class BackboneResult:
    embedding: np.ndarray  # D float32
    scores: Optional[np.ndarray]  # C float32 probabilities, classifiers only


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Real values of a quantised tensor as float32 (``scale * (q - zero_point)``)::

        dequantize(np.array([0, 128, 255], np.uint8), 0.5, 128)   # [-64., 0., 63.5]

    Never in the tensor's own type (uint8 maths overflows). 8-bit tensors (every frame's
    embedding) are computed in float32 directly: ``q - zero_point`` is exact there and the
    product of a float32 ``scale`` and a 9-bit integer is rounded once, to the very value the
    int64/float64 path gives; wider tensors take that path.
    """
    if not scale:
        return values.astype(np.float32)
    if values.dtype in (np.uint8, np.int8) and float(np.float32(scale)) == float(scale) and \
            -256 <= int(zero_point) <= 255:
        out = values.astype(np.float32)
        out -= np.float32(zero_point)
        out *= np.float32(scale)
        return out
    return (scale * (values.astype(np.int64) - int(zero_point))).astype(np.float32)


def read_output(interpreter, detail) -> np.ndarray:
    """An output tensor of ``interpreter`` as float32 real values (dequantised)."""
    raw = interpreter.get_tensor(detail["index"]).reshape(-1)
    if raw.dtype in (np.uint8, np.int8, np.int16, np.int32):
        scale, zero = detail["quantization"]
        return dequantize(raw, scale, zero)
    return raw.astype(np.float32)


@dataclass(frozen=True)
class _Stream:
    """The model with the frame resize as its first op, for frames of one shape."""
    interpreter: object
    input: int
    embedding: dict
    scores: Optional[dict]
    box: Tuple[int, int, int, int]  # (top, left, height, width) of the frame it resizes

    def read(self, detail) -> np.ndarray:
        return read_output(self.interpreter, detail)


class _Build:
    """run_frame's model for frames of ``shape``, built by ``work`` in a daemon thread of its
    own (at once, in the caller's, when :data:`BUILD_IN_BACKGROUND` is off); ``done`` is set
    when ``result`` is there (None: it could not be built, and run() serves that shape)."""

    def __init__(self, shape: tuple, work: Callable[[], Optional[_Stream]]):
        self.shape, self.result = shape, None
        self.done = threading.Event()
        if BUILD_IN_BACKGROUND:
            threading.Thread(target=self._run, args=(work,), name="backbone-stream",
                             daemon=True).start()
        else:
            self._run(work)

    def _run(self, work) -> None:
        try:
            self.result = work()
        except Exception:  # noqa: BLE001 - a model that can't be built: run() serves the frames
            _log.exception("cannot build the model that resizes the frames itself")
        finally:
            self.done.set()


def read_labels(path: "os.PathLike[str] | str") -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


class Backbone:
    """A TFLite image model run on one thread's frames.

    :param model_path: the ``.tflite`` file.
    :param num_threads: interpreter threads; default all cores.
    :param labels: class names of a classifier, one per output score.
    :param resize: ``"crop"`` (centre crop, the default) or ``"squash"``; see :func:`preprocess`.
    :param name: the model's name, for messages and for head metadata.
    :param embedding: ``"auto"`` (a classifier's penultimate layer, else the output),
        or ``"output"`` to use the model's output as the embedding.
    :param sha256: the file's SHA-256 when it is already known (:meth:`from_name` passes the
        manifest's after checking the file); hashed from the content when not given.
    :param crop: the region of interest its samples are taught on (``source.crop``,
        :mod:`~edge_classifier.frames.region`), or None for the whole frame. The frame
        source cuts it out (or the camera's ISP does); the backbone carries it so that its
        :attr:`identity` says it, and a state taught on one crop refuses another.

    A model loaded by path is not checked against the manifest; :meth:`from_name` checks it.
    """

    def __init__(self, model_path: "os.PathLike[str] | str", *, num_threads: Optional[int] = None,
                 labels: Optional[Sequence[str]] = None, resize: str = "crop",
                 name: Optional[str] = None, embedding: str = "auto",
                 sha256: Optional[str] = None, crop: Optional[Crop] = None):
        self.path = Path(model_path)
        self.crop = check_crop(crop)
        self.name = name or self.path.stem
        self.resize = resize
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            raise ModelNotInstalledError(f"{self.path}: model file not found") from None
        except OSError as exc:
            raise ModelError(f"{self.path}: cannot read model ({exc.strerror or exc})") from None
        source = str(self.path)
        graph.check_tflite_bytes(content, source)
        self.sha256 = sha256 or hashlib.sha256(content).hexdigest()
        interpreter = runtime.make_interpreter(content, num_threads, source)
        self._check_image_input(interpreter, source)
        outputs = interpreter.get_output_details()
        self._embedding_out = outputs[0]
        self._scores_out = None
        self.penultimate = None
        if embedding == "auto" and self._looks_like_classifier(outputs[0]):
            # Classifier: add the penultimate tensor as an output and reload.
            try:
                content, self.penultimate = graph.expose_penultimate(content, source)
            except InvalidModelError:
                pass  # a classifier-shaped output without a findable embedding: use the output
            else:
                interpreter = runtime.make_interpreter(content, num_threads, source)
                by_index = {d["index"]: d for d in interpreter.get_output_details()}
                self._scores_out = outputs[0]
                self._embedding_out = by_index[self.penultimate.tensor_index]
        elif embedding not in ("auto", "output"):
            raise ValueError(f"embedding must be 'auto' or 'output', not {embedding!r}")
        self._interpreter = interpreter
        self._content, self._num_threads = content, num_threads  # for run_frame's model
        self._input = interpreter.get_input_details()[0]
        self.labels = list(labels) if labels is not None else None
        if self.labels is not None and self._scores_out is not None:
            n = int(np.prod(self._scores_out["shape"][1:]))
            if len(self.labels) != n:
                raise InvalidModelError(f"{source}: {len(self.labels)} labels for {n} scores")
        self.embedding_dim = int(np.prod(self._embedding_out["shape"][1:]))
        self._direct_input = self._pixels_are_input()
        #: The frame resize of :meth:`prepare`: TFLite's (None: Pillow's); see backbone/resize.py.
        #: On one thread: a second thread pool's workers, spinning after each resize, took
        #: cores from the model's own (bench_backbone: ratio 0.93-0.94 with 2, 0.94-0.96 with 1).
        self.resample = make_resample(1)
        #: run_frame's model: (frame shape, _Stream or None where none can be built), and
        #: (shape, how many frames in a row had it) of the frames that did not fit it.
        self._stream: Optional[Tuple[tuple, Optional[_Stream]]] = None
        self._seen: Tuple[Optional[tuple], int] = (None, 0)
        self._build: Optional[_Build] = None  # the model being built for another shape

    # -- construction helpers ------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: Optional[str] = None, *, models_dir: Optional[Path] = None,
                  manifest: Optional[Manifest] = None, **kwargs) -> "Backbone":
        """Load an installed model by its manifest name (default: the embedding extractor).

        The model and its label file must have the manifest's size and SHA-256 (hashed once per
        change of the file, see :mod:`~edge_classifier.backbone.integrity`).

        :raises ModelNotInstalledError: the model or its labels were never fetched.
        :raises ModelModifiedError: one of them differs from the manifest.
        """
        manifest = manifest or load_manifest()
        entry = manifest.model(name or manifest.default_embedding_model)
        path, *labels_path = integrity.verify(manifest.with_dependencies([entry.name]),
                                              models_dir)
        labels = read_labels(labels_path[0]) if labels_path else None
        return cls(path, labels=labels, name=entry.name, sha256=entry.sha256, **kwargs)

    @staticmethod
    def _check_image_input(interpreter, source: str) -> None:
        inputs = interpreter.get_input_details()
        if len(inputs) != 1:
            raise InvalidModelError(f"{source}: not an image model ({len(inputs)} inputs)")
        d = inputs[0]
        shape = [int(v) for v in d["shape"]]
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] < 8 or shape[2] < 8:
            raise InvalidModelError(
                f"{source}: not an image model (input shape {shape}, expected 1xHxWx3)")
        if d["dtype"] not in (np.uint8, np.int8, np.float32):
            raise InvalidModelError(f"{source}: unsupported input type {np.dtype(d['dtype'])}")

    @staticmethod
    def _looks_like_classifier(out) -> bool:
        shape = list(out["shape"])
        return len(shape) == 2 and shape[0] == 1 and shape[1] > 1

    def _pixels_are_input(self) -> bool:
        """True when raw uint8 pixels already are the model's quantised input (MobileNet)."""
        scale, zero = self._input["quantization"]
        return (self._input["dtype"] == np.uint8 and scale > 0
                and abs(scale * PIXEL_STD - 1) < 0.01 and abs(zero - PIXEL_MEAN) <= 1)

    # -- properties ----------------------------------------------------------------------------
    @property
    def input_size(self) -> Tuple[int, int]:
        """(height, width) of the model's input."""
        shape = self._input["shape"]
        return int(shape[1]), int(shape[2])

    @property
    def has_scores(self) -> bool:
        return self._scores_out is not None

    @property
    def identity(self) -> dict:
        """What a head trained on this backbone must match to be reused."""
        identity = {"model": self.name, "sha256": self.sha256,
                    "embedding_dim": self.embedding_dim, "resize": self.resize}
        if self.crop is not None:
            identity["crop"] = list(self.crop)
        return identity

    def with_crop(self, crop: Optional[Crop]) -> "Backbone":
        """This backbone (itself when the crop is the same) for samples taught on ``crop``;
        a different crop gives a copy that shares the interpreter (one thread still)."""
        crop = check_crop(crop)
        if crop == self.crop:
            return self
        other = copy.copy(self)
        other.crop = crop
        return other

    # -- running -------------------------------------------------------------------------------
    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The shared preprocessing: an HxWx3 uint8 RGB frame (of the region, when there is a
        crop: sources deliver only the region) to the model's input size; a frame already at
        that size is used as it is."""
        return preprocess(rgb, self.input_size, self.resize, self.resample)

    def _to_input(self, pixels: np.ndarray) -> np.ndarray:
        d = self._input
        if self._direct_input:
            return pixels[None]
        real = (pixels.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
        if d["dtype"] == np.float32:
            return real[None]
        scale, zero = d["quantization"]
        info = np.iinfo(d["dtype"])
        q = np.clip(np.round(real / scale + zero), info.min, info.max)
        return q.astype(d["dtype"])[None]

    def _read(self, detail) -> np.ndarray:
        return read_output(self._interpreter, detail)

    def run_prepared(self, pixels: np.ndarray) -> BackboneResult:
        """Invoke on a frame already at the input size (see :meth:`prepare`)."""
        self._interpreter.set_tensor(self._input["index"], self._to_input(pixels))
        self._interpreter.invoke()
        scores = self._read(self._scores_out) if self._scores_out is not None else None
        return BackboneResult(self._read(self._embedding_out), scores)

    def run(self, rgb: np.ndarray) -> BackboneResult:
        """Preprocess and invoke on an HxWx3 uint8 RGB frame of any size."""
        return self.run_prepared(self.prepare(rgb))

    def run_frame(self, frame: np.ndarray) -> BackboneResult:
        """:meth:`run` for the frames of a stream (the device's loop: one size, frame after
        frame), with the same result. Where :meth:`prepare` would resize with TFLite's resize
        (see :mod:`~edge_classifier.backbone.resize`), the resize is the first op of a copy of
        the model (:func:`~edge_classifier.backbone.resize.with_resize`, built once frames of
        one shape came :data:`STREAM_AFTER` times in a row, ~0.1 s), so the model's own
        threads resize inside its invoke: no second invoke or copy per frame (the resize adds
        0.3 ms to the invoke, against 0.74 ms in an interpreter of its own, on the 2-core test
        machine). The copy is built in a thread of its own while the frames go to :meth:`run`
        (on a Pi Zero it takes several times as long), and is a second interpreter of the
        model, ~10 MB of memory, built only for frames that need a CPU resize (never for a Pi
        camera's stream at the model's size). Any other frame goes to :meth:`run`."""
        stream = self._stream_for(frame)
        if stream is None:
            return self.run(frame)
        top, left, height, width = stream.box
        stream.interpreter.set_tensor(stream.input,
                                      frame[None, top:top + height, left:left + width])
        stream.interpreter.invoke()
        scores = None if stream.scores is None else stream.read(stream.scores)
        return BackboneResult(stream.read(stream.embedding), scores)

    def _stream_for(self, frame) -> Optional["_Stream"]:
        """The model for this frame's shape, built once that shape came STREAM_AFTER times in
        a row (photos of many sizes, as a replay of a folder gives, never build one: each
        would cost ~0.1 s); a frame of another shape goes to run() and leaves it in place."""
        if type(frame) is not np.ndarray or frame.dtype != np.uint8 or frame.ndim != 3 or \
                frame.shape[2] != 3 or min(frame.shape[:2]) < 1:
            return None  # run() says what is wrong with it
        shape = frame.shape
        if self._stream is not None and self._stream[0] == shape:
            if self._seen[1]:
                self._seen = (None, 0)  # another shape's frames are counted in a row
            return self._stream[1]
        build = self._build
        if build is not None and build.shape == shape:
            self._seen = (None, 0)
        else:
            seen, count = self._seen
            self._seen = (shape, count + 1 if seen == shape else 1)
            if self._seen[1] < STREAM_AFTER:
                return None
            work = self._stream_work(shape[:2])
            if work is None:
                self._stream = (shape, None)
                return None
            build = self._build = _Build(shape, work)  # in a thread: run() meanwhile
        if not build.done.is_set():
            return None
        self._stream, self._build = (shape, build.result), None
        return build.result

    def _stream_work(self, frame_size) -> Optional[Callable[[], Optional["_Stream"]]]:
        """What builds run_frame's model for frames of ``frame_size`` (a callable that any
        thread may run: it touches nothing of this backbone's), or None where none applies."""
        if not self._direct_input or not isinstance(self.resample, TfliteResize) or \
                self._interpreter is None:
            return None
        box = resize_box(frame_size, self.input_size, self.resize)
        if box[2:] == self.input_size or not self.resample.resizes(box[2:], self.input_size):
            return None  # used as it is, or a reduction Pillow's antialiased resize makes
        content, threads, source = self._content, self._num_threads, str(self.path)
        old = [d["index"] for d in self._interpreter.get_output_details()]
        wanted = (old.index(self._embedding_out["index"]),
                  None if self._scores_out is None else old.index(self._scores_out["index"]))

        def work() -> Optional[_Stream]:
            try:
                interpreter = runtime.make_interpreter(with_resize(content, box[2:], source),
                                                       threads, source)
            except (EdgeClassifierError, ImportError, RuntimeError, ValueError) as exc:
                _log.debug("resizing frames before the invoke: %s", exc)
                return None
            new = interpreter.get_output_details()
            return _Stream(interpreter, interpreter.get_input_details()[0]["index"],
                           new[wanted[0]], None if wanted[1] is None else new[wanted[1]], box)
        return work

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        return self.run(rgb).embedding

    def top_k(self, scores: np.ndarray, k: int = 5) -> List[Tuple[str, float]]:
        """The ``k`` best (label, probability) pairs of a classifier's scores."""
        if scores is None:
            raise ModelError(f"{self.name} is an embedding extractor: it has no class scores")
        order = np.argsort(-scores, kind="stable")[:k]
        names = self.labels or [str(i) for i in range(len(scores))]
        return [(names[i], float(scores[i])) for i in order]

    def close(self) -> None:
        self._interpreter = None
        self._stream, self._seen, self._build = None, (None, 0), None

    def __enter__(self) -> "Backbone":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
