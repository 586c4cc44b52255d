"""Builds tiny TFLite models with the flatbuffer schema shipped in LiteRT, for tests that need a
model of a particular shape or type (float input, a non-image input) that no real model has."""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.tools import flatbuffer_utils


def _tensor(shape, dtype, name, buffer=0):
    t = fb.TensorT()
    t.shape = list(shape)
    t.type = dtype
    t.name = name.encode()
    t.buffer = buffer
    return t


def _model(tensors, ops, opcodes, inputs, outputs, buffers=1):
    sg = fb.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs = tensors, ops, inputs, outputs
    model = fb.ModelT()
    model.version = 3
    model.subgraphs = [sg]
    model.operatorCodes = opcodes
    model.buffers = [fb.BufferT() for _ in range(buffers)]
    model.description = b"edge-classifier test model"
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _opcode(builtin):
    code = fb.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    return code


def float_pool_model(size: int = 16) -> bytes:
    """float32 1xSxSx3 image in, its global average (1x1x1x3) out."""
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    op.builtinOptionsType = fb.BuiltinOptions.Pool2DOptions
    opts = fb.Pool2DOptionsT()
    opts.padding, opts.strideW, opts.strideH = fb.Padding.VALID, 1, 1
    opts.filterWidth, opts.filterHeight = size, size
    op.builtinOptions = opts
    tensors = [_tensor([1, size, size, 3], fb.TensorType.FLOAT32, "image"),
               _tensor([1, 1, 1, 3], fb.TensorType.FLOAT32, "mean")]
    return _model(tensors, [op], [_opcode(fb.BuiltinOperator.AVERAGE_POOL_2D)], [0], [1])


def non_image_model() -> bytes:
    """float32 1x4 in, 1x4 out (x + x): a valid model that takes no image."""
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType = fb.BuiltinOptions.AddOptions
    op.builtinOptions = fb.AddOptionsT()
    tensors = [_tensor([1, 4], fb.TensorType.FLOAT32, "x"),
               _tensor([1, 4], fb.TensorType.FLOAT32, "y")]
    return _model(tensors, [op], [_opcode(fb.BuiltinOperator.ADD)], [0], [1])


def expected_pool(pixels: np.ndarray) -> np.ndarray:
    """What :func:`float_pool_model` returns for uint8 pixels normalised to [-1, 1]."""
    return ((pixels.astype(np.float64) - 127.5) / 127.5).mean(axis=(0, 1))
