"""Reading and rewriting a TFLite model's graph with the flatbuffer schema shipped in LiteRT::

    check_tflite_bytes(content, "model.tflite")  # InvalidModelError if empty or not TFLite
    content, found = expose_penultimate(content, "model.tflite")
    found.name, found.size  # ('MobilenetV2/Logits/AvgPool', 1280) for MobileNet V2

A classifier's embedding is the activation that feeds its last fully-connected (or 1x1
convolution) layer: MobileNet V2's 1280-d pooled features. :func:`expose_penultimate` finds it
by walking back from the model's output through reshape/softmax/quantize ops and rewrites the
model so that tensor is an extra output. The interpreter then computes both in one invoke; no
debugging flag (``experimental_preserve_all_tensors``) is involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edge_classifier.errors import InvalidModelError, ModelError

TFLITE_IDENTIFIER = b"TFL3"
# Ops that pass a classifier's logits through to its output without changing what they mean.
_PASS_THROUGH = {"RESHAPE", "SQUEEZE", "SOFTMAX", "LOGISTIC", "QUANTIZE", "DEQUANTIZE"}
# Ops whose activation input is the embedding.
_CLASSIFIER_LAYERS = {"FULLY_CONNECTED", "CONV_2D"}


def check_tflite_bytes(content: bytes, source: str) -> None:
    """Reject empty or non-TFLite content with a clear message before the runtime sees it."""
    if not content:
        raise InvalidModelError(f"{source}: the model file is empty (0 bytes); fetch it again")
    if len(content) < 8 or content[4:8] != TFLITE_IDENTIFIER:
        raise InvalidModelError(f"{source}: not a TFLite model (no 'TFL3' identifier)")


def flatbuffer_schema(error=ModelError, why: str = "exposing a classifier's penultimate "
                      "layer", advice: str = "or use an embedding-extractor model"):
    """LiteRT's flatbuffer schema and tools (the only place they are imported); without them
    ``error`` says what needed them and what to do."""
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils
    except Exception as exc:  # ImportError, or a syntax error on an old Python
        raise error(f"{why} needs the flatbuffer tools shipped with ai-edge-litert ({exc}); "
                    f"install ai-edge-litert {advice}") from None
    return schema, flatbuffer_utils


@dataclass(frozen=True)
class Penultimate:
    tensor_index: int
    name: str
    size: int


def _find(model, schema, fbu) -> Optional[Penultimate]:
    """The embedding tensor feeding the classifier layer, or None if the graph has none."""
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    producer = {}
    for op in graph.operators:
        for t in op.outputs:
            producer[t] = op
    constant = {i for i, t in enumerate(graph.tensors)
                if t.buffer and model.buffers[t.buffer].data is not None
                and len(model.buffers[t.buffer].data)}
    if len(graph.outputs) != 1:
        return None
    tensor = graph.outputs[0]
    for _ in range(len(graph.operators)):
        op = producer.get(tensor)
        if op is None:
            return None
        code = fbu.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        name = op_names.get(code, str(code))
        activations = [i for i in op.inputs if i >= 0 and i not in constant]
        if not activations:
            return None
        if name in _CLASSIFIER_LAYERS:
            index = activations[0]
            t = graph.tensors[index]
            shape = list(t.shape)
            size = 1
            for d in shape[1:]:
                size *= int(d)
            if any(int(d) != 1 for d in shape[1:-1]):
                return None  # a spatial map, not a pooled embedding
            tname = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name)
            return Penultimate(index, tname, size)
        if name not in _PASS_THROUGH:
            return None
        tensor = activations[0]
    return None


def expose_penultimate(content: bytes, source: str = "model"):
    """Model bytes with the embedding tensor added as a second output, and where it is.

    Raises :class:`InvalidModelError` if no penultimate embedding can be found.
    """
    schema, fbu = flatbuffer_schema()
    model = fbu.read_model_from_bytearray(bytearray(content))
    found = _find(model, schema, fbu)
    if found is None:
        raise InvalidModelError(
            f"{source}: cannot find the layer before the classifier (the graph does not end in "
            "a fully-connected or 1x1 convolution layer over a pooled vector)")
    graph = model.subgraphs[0]
    graph.outputs = list(graph.outputs) + [found.tensor_index]
    return bytes(fbu.convert_object_to_bytearray(model)), found
