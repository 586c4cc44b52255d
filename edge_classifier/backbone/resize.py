"""The frame resize of the shared preprocessing, run by the TFLite runtime itself::

    resample = TfliteResize(num_threads=2)         # or None where LiteRT's tools are missing
    pixels = preprocess(rgb, (224, 224), "crop", resample)   # frames/images.preprocess

A Pi camera's lores stream can arrive at the model's input size (the ISP scales for free, see
:class:`~edge_classifier.frames.camera.PicameraSource`); every other frame — a replay, a browser
camera, a lores stream at another size, an imported picture — is resized on the CPU. Pillow's
bilinear resize of 240x240 to 224x224 costs ~1 ms plus ~0.5 ms of array conversions on this
project's 2-core test machine, 7–10 % of a MobileNet invoke. TFLite's own ``RESIZE_BILINEAR``
(half-pixel centres, the kernel TensorFlow models are trained with) does it in ~0.3 ms on the
same cores, straight from and to NumPy arrays.

The resize runs in a one-op model built here with the flatbuffer schema shipped in LiteRT (see
:mod:`~edge_classifier.backbone.export`), in its own small interpreter whose input is resized to
each new frame size (once for a stream; ~0.5 ms). Bilinear sampling reads 2x2 pixels, which is
right while the frame is less than twice the output size; a bigger reduction (an imported photo
decoded near twice the model size, a full-resolution camera stream) would skip the pixels between
the samples, so those go to Pillow's antialiased bilinear resize, which weighs every pixel (and
costs little beside decoding a photo). Which one runs depends only on the sizes, so a picture is
prepared the same way whenever it is used.

For the frames of a stream, :func:`with_resize` puts the same op first in a copy of the image
model itself (:meth:`~edge_classifier.backbone.model.Backbone.run_frame`, the device loop's
path), so the model's threads run it inside the invoke, with the same result.

:func:`make_resample` returns None where the schema is missing (``tflite-runtime`` alone, on
32-bit Pi OS); :func:`~edge_classifier.frames.images.preprocess` then uses Pillow's bilinear
resize, which gives nearly the same pixels (mean difference ~0.3 of 255 on a photo).
"""

from __future__ import annotations

import logging
import threading
from typing import Optional, Tuple

import numpy as np

from edge_classifier.backbone.export import GraphEditor
from edge_classifier.backbone.runtime import make_interpreter
from edge_classifier.errors import EdgeClassifierError, ExportError
from edge_classifier.frames.images import pillow_resample

__all__ = ["TfliteResize", "make_resample", "resize_model", "with_resize"]

_log = logging.getLogger(__name__)
_UINT8 = 3  # schema TensorType.UINT8


def resize_model(in_size: Tuple[int, int], out_size: Tuple[int, int]) -> bytes:
    """A TFLite model: uint8 1xHxWx3 ``in_size`` -> bilinear (half-pixel centres) -> uint8
    1xhxwx3 ``out_size`` (heights first)."""
    editor = GraphEditor(None, "resize")
    s = editor.schema
    same = s.QuantizationParametersT()  # uint8 in and out with one scale: plain pixel values
    same.scale, same.zeroPoint = [1.0], [0]
    frame = editor.tensor("frame", [1, *in_size, 3], _UINT8, quantization=same)
    editor.graph.inputs = [frame]
    size = editor.constant("size", np.array(out_size, np.int32))
    pixels = editor.op("RESIZE_BILINEAR", [frame, size], "pixels", [1, *out_size, 3],
                       version=3, halfPixelCenters=True)
    editor.graph.tensors[pixels].type = _UINT8
    editor.graph.tensors[pixels].quantization = same
    return editor.finish({"pixels": pixels}, {})


def with_resize(content: bytes, in_size: Tuple[int, int], source: str = "model") -> bytes:
    """The image model ``content`` with the frame resize as its first op: its input becomes
    uint8 1xHxWx3 ``in_size`` (heights first), resized (bilinear, half-pixel centres: the op
    of :func:`resize_model`) to the model's own input, which must be uint8. The outputs stay
    the same, in the same order. The model's threads then resize inside its invoke, with no
    second interpreter, thread pool or copy (:meth:`Backbone.run_frame
    <edge_classifier.backbone.model.Backbone.run_frame>`)."""
    editor = GraphEditor(content, source)
    g = editor.graph
    if len(g.inputs) != 1 or g.tensors[g.inputs[0]].type != _UINT8:
        raise ExportError(f"{source}: the frame resize needs one uint8 image input")
    pixels = g.inputs[0]
    shape = editor.shape(pixels)
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise ExportError(f"{source}: input shape {shape} is not 1xHxWx3")
    quantization = g.tensors[pixels].quantization  # resize keeps the scale: same values
    frame = editor.tensor("frame", [1, int(in_size[0]), int(in_size[1]), 3], _UINT8,
                          quantization=quantization)
    size = editor.constant("frame/size", np.array(shape[1:3], np.int32))
    editor.op("RESIZE_BILINEAR", [frame, size], "frame/resized", shape, version=3,
              halfPixelCenters=True)
    op = g.operators.pop()
    op.outputs = [pixels]  # the resize writes the model's old input, so its first op reads it
    g.operators.insert(0, op)
    g.inputs = [frame]
    names = {}
    for k, index in enumerate(g.outputs):
        name = editor.tensor_name(index) or f"output_{k}"
        names[name if name not in names else f"{name}_{k}"] = index
    return editor.finish(names, {})


class TfliteResize:
    """``resample(region, (h, w))``: an HxWx3 uint8 array (any strides) -> hxwx3 uint8;
    reductions of 2x or more go to :func:`~edge_classifier.frames.images.pillow_resample`.

    One interpreter per output size; thread-safe (a lock: TFLite interpreters are not).
    """

    def __init__(self, num_threads: Optional[int] = 1):
        self.num_threads = num_threads
        self._lock = threading.Lock()
        self._by_out = {}  # out size -> [interpreter, input index, output index, input size]

    def _interpreter(self, in_size, out_size):
        entry = self._by_out.get(out_size)
        if entry is None:
            interpreter = make_interpreter(resize_model(in_size, out_size), self.num_threads,
                                           "the resize model")
            entry = [interpreter, interpreter.get_input_details()[0]["index"],
                     interpreter.get_output_details()[0]["index"], in_size]
            self._by_out[out_size] = entry
        elif entry[3] != in_size:
            entry[0].resize_tensor_input(entry[1], [1, *in_size, 3], strict=False)
            entry[0].allocate_tensors()
            entry[3] = in_size
        return entry

    @staticmethod
    def resizes(in_size: Tuple[int, int], out_size: Tuple[int, int]) -> bool:
        """True when this resize (not Pillow's) takes ``in_size`` to ``out_size``: a
        reduction of less than 2x (bilinear reads 2x2 pixels) or an enlargement."""
        return in_size[0] < 2 * out_size[0] and in_size[1] < 2 * out_size[1]

    def __call__(self, region: np.ndarray, out_size: Tuple[int, int]) -> np.ndarray:
        out_size = (int(out_size[0]), int(out_size[1]))
        if region.ndim != 3 or region.shape[2] != 3 or region.dtype != np.uint8 or \
                min(region.shape[:2]) < 1 or min(out_size) < 1:
            # The runtime would read out of bounds (an empty frame crashes the process).
            raise ValueError(f"cannot resize a {region.dtype} {region.shape} frame to {out_size}")
        if not self.resizes(region.shape[:2], out_size):
            return pillow_resample(region, out_size)  # a big reduction: antialiased
        with self._lock:
            interpreter, inp, out, _ = self._interpreter(region.shape[:2], out_size)
            interpreter.set_tensor(inp, region[None])
            interpreter.invoke()
            return interpreter.get_tensor(out)[0]


def make_resample(num_threads: Optional[int] = 1) -> Optional[TfliteResize]:
    """A :class:`TfliteResize` that was checked to run, or None (Pillow resizes then) where
    LiteRT's schema is missing or the runtime refuses the model."""
    try:
        resample = TfliteResize(num_threads)
        resample(np.zeros((3, 3, 3), np.uint8), (2, 2))  # builds and runs the model
        return resample
    except (EdgeClassifierError, ImportError, RuntimeError, ValueError) as exc:
        _log.debug("resizing frames with Pillow: %s", exc)
        return None
