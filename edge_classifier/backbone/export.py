"""Appending float32 ops to a TFLite graph, with the flatbuffer schema shipped in LiteRT::

    editor = GraphEditor(content, "model.tflite")
    x = editor.float_vector(embedding_index)            # dequantised, reshaped to 1xD
    w = editor.constant("head/weights", W)              # NxD float32, stored in the file
    y = editor.fully_connected(x, w, None, "head/similarity")
    p = editor.op("SOFTMAX", [y], "head/probabilities", [1, n], beta=1.0)
    content = editor.finish({"probabilities": p}, {"my_tool": b'{"json": 1}'})

This is how a trained head becomes part of the backbone's model (see
:mod:`edge_classifier.learning.export`): every op is a TFLite builtin, every weight a constant
buffer, so any TFLite runtime (LiteRT, ``tflite-runtime``, TFLite Micro builds with these
kernels) runs the result. :meth:`GraphEditor.finish` keeps only what the new outputs need (a
classifier backbone loses its ImageNet layer), drops the converter's TFLite Support metadata
(it describes the old outputs), records the minimum runtime version the added ops need and
aligns every buffer to 16 bytes, as the schema asks.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from edge_classifier.backbone.graph import check_tflite_bytes, flatbuffer_schema
from edge_classifier.errors import ExportError

FLOAT32 = 0  # schema TensorType.FLOAT32
FLOAT16 = 1
INT32 = 2
_QUANTISED = {3: np.uint8, 9: np.int8}  # TensorType.UINT8, TensorType.INT8
_ALIGN = 16  # ``data:[ubyte] (force_align: 16)`` in schema.fbs
MIN_RUNTIME = "min_runtime_version"
SUPPORT_METADATA = "TFLITE_METADATA"  # the TFLite Support metadata of the converted model

# op -> (options table, {version: minimum TFLite runtime}; from TFLite's runtime_version.cc)
_OPS = {
    "ABS": ("AbsOptions", {1: "1.13.0"}),
    "ADD": ("AddOptions", {1: "1.5.0"}),
    # DEQUANTIZE version 1: uint8 input, 2: int8, 3: float16
    "DEQUANTIZE": ("DequantizeOptions", {1: "1.13.1", 2: "1.14.0", 3: "1.15.0"}),
    "EXP": ("ExpOptions", {1: "1.7.0"}),
    "FULLY_CONNECTED": ("FullyConnectedOptions", {1: "1.5.0"}),
    "L2_NORMALIZATION": ("L2NormOptions", {1: "1.5.0"}),
    "MAXIMUM": ("MaximumMinimumOptions", {1: "1.14.0"}),
    "MINIMUM": ("MaximumMinimumOptions", {1: "1.14.0"}),
    "MUL": ("MulOptions", {1: "1.5.0"}),
    "POW": ("PowOptions", {1: "1.10.0"}),
    "REDUCE_MAX": ("ReducerOptions", {1: "1.11.0"}),
    "RESHAPE": ("ReshapeOptions", {1: "1.5.0"}),
    # RESIZE_BILINEAR version 3: half-pixel centres (the frame resize, backbone/resize.py)
    "RESIZE_BILINEAR": ("ResizeBilinearOptions", {1: "1.7.0", 3: "2.2.0"}),
    "SOFTMAX": ("SoftmaxOptions", {1: "1.5.0"}),
    "SUB": ("SubOptions", {1: "1.6.0"}),
    "SUM": ("ReducerOptions", {1: "1.10.0"}),
}


def _version_key(text: str):
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


def _name(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


class GraphEditor:
    """A TFLite model being extended with float32 ops; see the module docstring.

    :param content: the model's bytes (one subgraph, as the converter writes image models).
    :param source: names the model in error messages.
    """

    def __init__(self, content: Optional[bytes] = None, source: str = "model"):
        self.schema, self._fbu = flatbuffer_schema(
            ExportError, "exporting a model", "(the exported file then runs on any TFLite "
            "runtime, tflite-runtime included)")
        self.source = source
        if content is None:
            s = self.schema
            self.model = s.ModelT()
            self.model.version = 3
            self.model.operatorCodes, self.model.metadata = [], []
            self.model.buffers = [s.BufferT()]
            self.model.subgraphs = [s.SubGraphT()]
            g = self.model.subgraphs[0]
            g.tensors, g.inputs, g.outputs, g.operators = [], [], [], []
        else:
            check_tflite_bytes(content, source)
            self.model = self._fbu.read_model_from_bytearray(bytearray(content))
            if len(self.model.subgraphs) != 1:
                raise ExportError(f"{source}: has {len(self.model.subgraphs)} subgraphs; only "
                                  "single-graph models can be exported")
        self.graph = self.model.subgraphs[0]
        self._runtime = "1.5.0"

    # -- tensors -------------------------------------------------------------------------------
    def tensor(self, name: str, shape: Sequence[int], dtype: int = FLOAT32, buffer: int = 0,
               quantization=None) -> int:
        """A new tensor; returns its index."""
        t = self.schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, [int(d) for d in shape], dtype, buffer
        t.quantization = quantization
        self.graph.tensors.append(t)
        return len(self.graph.tensors) - 1

    def constant(self, name: str, values, half: bool = False) -> int:
        """A constant float32 (or int32, for shapes and axes) tensor stored in the model.

        ``half``: stored as float16 (half the bytes in the file) and widened to float32 by a
        DEQUANTIZE op, which TFLite evaluates once for a constant input and keeps (so in
        memory it is float32 again), as in TFLite's own float16-quantised models.
        """
        array = np.asarray(values)
        integer = np.issubdtype(array.dtype, np.integer)
        array = array.astype(np.int32 if integer else np.float16 if half else np.float32)
        if not np.all(np.isfinite(array)):
            raise ExportError(f"{self.source}: constant {name} holds NaN or infinity "
                              "(or is out of the float16 range)")
        buf = self.schema.BufferT()
        buf.data = np.frombuffer(array.astype(array.dtype.newbyteorder("<")).tobytes(), np.uint8)
        self.model.buffers.append(buf)
        dtype = INT32 if integer else FLOAT16 if half else FLOAT32
        index = self.tensor(name + ("/float16" if half else ""), array.shape, dtype,
                            len(self.model.buffers) - 1)
        if half:
            index = self.op("DEQUANTIZE", [index], name, array.shape, version=3)
        return index

    def tensor_name(self, index: int) -> str:
        return _name(self.graph.tensors[index].name)

    def shape(self, index: int) -> List[int]:
        return [int(d) for d in self.graph.tensors[index].shape]

    def input(self, name: str, shape: Sequence[int]) -> int:
        """A new float32 graph input (for a head-only model)."""
        index = self.tensor(name, shape)
        self.graph.inputs = list(self.graph.inputs) + [index]
        return index

    # -- ops -----------------------------------------------------------------------------------
    def op(self, kind: str, inputs: Sequence[int], name: str, shape: Sequence[int],
           version: Optional[int] = None, **options) -> int:
        """Append builtin op ``kind`` on ``inputs`` (-1: an omitted optional input); returns
        its float32 output of ``shape``. ``options`` set fields of the op's options table."""
        s = self.schema
        table, runtimes = _OPS[kind]
        code = getattr(s.BuiltinOperator, kind)
        version = version or 1
        index = self._opcode(code, version)
        opts = getattr(s, table + "T")()
        for key, value in options.items():
            if not hasattr(opts, key):
                raise AttributeError(f"{table} has no field {key}")
            setattr(opts, key, value)
        out = self.tensor(name, shape)
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = index, [int(i) for i in inputs], [out]
        op.builtinOptionsType, op.builtinOptions = getattr(s.BuiltinOptions, table), opts
        self.graph.operators.append(op)
        self._runtime = max(self._runtime, runtimes[version], key=_version_key)
        return out

    def _opcode(self, code: int, version: int) -> int:
        for i, oc in enumerate(self.model.operatorCodes):
            if self._fbu.get_builtin_code_from_operator_code(oc) == code and \
                    not oc.customCode and oc.version == version:
                return i
        oc = self.schema.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
        self.model.operatorCodes.append(oc)
        return len(self.model.operatorCodes) - 1

    def binary(self, kind: str, a: int, b: int, name: str) -> int:
        """ADD, SUB, MUL, MAXIMUM or MINIMUM of ``a`` and ``b`` (numpy broadcasting)."""
        shape = np.broadcast_shapes(tuple(self.shape(a)), tuple(self.shape(b)))
        return self.op(kind, [a, b], name, shape)

    def fully_connected(self, x: int, weights: int, bias: Optional[int], name: str) -> int:
        """``x @ weights.T + bias`` for x (1xD), weights (NxD), bias (N) -> 1xN."""
        n = self.shape(weights)[0]
        return self.op("FULLY_CONNECTED", [x, weights, -1 if bias is None else bias], name,
                       [self.shape(x)[0], n])

    def reduce(self, kind: str, x: int, name: str) -> int:
        """SUM or REDUCE_MAX over the last axis of a 1xN tensor, kept as 1x1."""
        axis = self.constant(name + "/axis", np.array([1], np.int32))
        return self.op(kind, [x, axis], name, [self.shape(x)[0], 1], keepDims=True)

    def float_vector(self, index: int) -> int:
        """Tensor ``index`` as a float32 1xD vector: dequantised if quantised, reshaped."""
        t = self.graph.tensors[index]
        shape = self.shape(index)
        size = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        x = index
        if t.type in _QUANTISED:
            x = self.op("DEQUANTIZE", [x], "head/embedding_float", shape,
                        version=1 if t.type == 3 else 2)
        elif t.type != FLOAT32:
            raise ExportError(f"{self.source}: the embedding tensor has type {t.type}, not "
                              "float32, uint8 or int8")
        if shape != [1, size]:
            target = self.constant("head/embedding_shape", np.array([1, size], np.int32))
            x = self.op("RESHAPE", [x, target], "head/embedding", [1, size], newShape=[1, size])
        return x

    def value_range(self, index: int):
        """(lowest, highest) real value a quantised tensor can hold; None if not quantised."""
        t = self.graph.tensors[index]
        q = t.quantization
        if t.type not in _QUANTISED or q is None or q.scale is None or len(q.scale) != 1:
            return None
        info = np.iinfo(_QUANTISED[t.type])
        zero = int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0
        scale = float(q.scale[0])
        return scale * (info.min - zero), scale * (info.max - zero)

    # -- the result ----------------------------------------------------------------------------
    def finish(self, outputs: Dict[str, int], metadata: Dict[str, bytes],
               description: str = "") -> bytes:
        """The model with ``outputs`` (name -> tensor, in order) as its only outputs, pruned
        to what they need, with ``metadata`` entries added; returns its bytes."""
        g = self.graph
        for name, index in outputs.items():
            g.tensors[index].name = name
        g.outputs = list(outputs.values())
        self._prune()
        self._signature([(_name(g.tensors[i].name) or f"input_{k}", i)
                         for k, i in enumerate(g.inputs)], list(zip(outputs, g.outputs)))
        entries = [m for m in (self.model.metadata or [])
                   if _name(m.name) not in (SUPPORT_METADATA, *metadata)]
        for m in entries:
            if _name(m.name) == MIN_RUNTIME:
                data = self.model.buffers[m.buffer].data
                old = "" if data is None else bytes(data).rstrip(b"\0").decode("ascii", "replace")
                if _version_key(old) < _version_key(self._runtime):
                    self.model.buffers[m.buffer].data = np.frombuffer(
                        self._runtime.encode().ljust(16, b"\0"), np.uint8)
        for key, data in metadata.items():
            buf = self.schema.BufferT()
            buf.data = np.frombuffer(bytes(data), np.uint8)
            self.model.buffers.append(buf)
            m = self.schema.MetadataT()
            m.name, m.buffer = key, len(self.model.buffers) - 1
            entries.append(m)
        self.model.metadata = entries
        self._compact_buffers()
        if description:
            self.model.description = description
        return self._pack()

    def _prune(self) -> None:
        """Drop the ops, tensors and operator codes the outputs do not need."""
        g = self.graph
        producer = {t: i for i, op in enumerate(g.operators) for t in op.outputs}
        needed, stack = set(), list(g.outputs)
        while stack:
            i = producer.get(stack.pop())
            if i is None or i in needed:
                continue
            needed.add(i)
            op = g.operators[i]
            stack.extend(t for t in list(op.inputs) + list(op.intermediates or []) if t >= 0)
        ops = [op for i, op in enumerate(g.operators) if i in needed]
        used = sorted({t for op in ops for t in list(op.inputs) + list(op.outputs)
                       + list(op.intermediates or []) if t >= 0} | set(g.inputs) | set(g.outputs))
        new = {old: k for k, old in enumerate(used)}
        for op in ops:
            op.inputs = [new[t] if t >= 0 else -1 for t in op.inputs]
            op.outputs = [new[t] for t in op.outputs]
            if op.intermediates:
                op.intermediates = [new[t] for t in op.intermediates]
        g.tensors = [g.tensors[t] for t in used]
        g.inputs, g.outputs = [new[t] for t in g.inputs], [new[t] for t in g.outputs]
        codes = sorted({op.opcodeIndex for op in ops})
        code_map = {old: k for k, old in enumerate(codes)}
        for op in ops:
            op.opcodeIndex = code_map[op.opcodeIndex]
        self.model.operatorCodes = [self.model.operatorCodes[c] for c in codes]
        g.operators = ops

    def _signature(self, inputs, outputs) -> None:
        """One ``serving_default`` signature naming the inputs and outputs (name, tensor)."""
        s = self.schema

        def maps(pairs):
            out = []
            for name, index in pairs:
                m = s.TensorMapT()
                m.name, m.tensorIndex = name, index
                out.append(m)
            return out
        sig = s.SignatureDefT()
        sig.inputs, sig.outputs = maps(inputs), maps(outputs)
        sig.signatureKey, sig.subgraphIndex = "serving_default", 0
        self.model.signatureDefs = [sig]

    def _compact_buffers(self) -> None:
        """Keep buffer 0 (the empty sentinel) and the buffers tensors and metadata use."""
        g = self.graph
        used = sorted({0} | {t.buffer for t in g.tensors} | {m.buffer for m in self.model.metadata})
        new = {old: k for k, old in enumerate(used)}
        for t in g.tensors:
            t.buffer = new[t.buffer]
        for m in self.model.metadata:
            m.buffer = new[m.buffer]
        self.model.buffers = [self.model.buffers[b] for b in used]

    def _pack(self) -> bytes:
        """Serialise with every buffer's data aligned to 16 bytes (LiteRT's Python packer
        aligns a byte vector to 1 only)."""
        aligned = []
        for buf in self.model.buffers:
            a = _AlignedBuffer()
            a.data = None if buf.data is None or not len(buf.data) else bytes(buf.data)
            a.offset, a.size = 0, 0
            aligned.append(a)
        self.model.buffers = aligned
        content = bytes(self._fbu.convert_object_to_bytearray(self.model))
        if len(content) >= 2 ** 31:
            raise ExportError(f"{self.source}: the exported model would be "
                              f"{len(content) >> 20} MiB, over the 2 GiB a TFLite file can hold")
        return content


class _AlignedBuffer:
    """A ``BufferT`` whose data vector is aligned to 16 bytes when packed."""

    data: Optional[bytes] = None
    offset = 0
    size = 0

    def Pack(self, builder):  # noqa: N802 - the flatbuffers object API's name
        from ai_edge_litert import schema_py_generated as s
        vector = None
        if self.data is not None:
            builder.StartVector(1, len(self.data), _ALIGN)
            builder.head = builder.head - len(self.data)
            builder.Bytes[builder.head:builder.head + len(self.data)] = self.data
            vector = builder.EndVector()
        s.BufferStart(builder)
        if vector is not None:
            s.BufferAddData(builder, vector)
        return s.BufferEnd(builder)
