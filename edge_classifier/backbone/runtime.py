"""The TFLite runtime: LiteRT (``ai-edge-litert``) or, where only that exists, ``tflite_runtime``::

    interpreter = make_interpreter(content, num_threads=2, source="model.tflite")
    runtime_version()  # 'ai-edge-litert 2.3.0'

This is the only module that imports a TFLite runtime, so the package imports on any machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Optional, Tuple

from edge_classifier.errors import InvalidModelError, RuntimeMissingError

_QUIET_LINES = ("Created TensorFlow Lite XNNPACK delegate",)


def interpreter_class() -> Tuple[type, str]:
    """The ``Interpreter`` class and the name of the runtime providing it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # 32-bit Pi OS and older systems
        return Interpreter, "tflite-runtime"
    except ImportError:
        raise RuntimeMissingError(
            "no TFLite runtime: install ai-edge-litert (pip install ai-edge-litert), or "
            "tflite-runtime where LiteRT has no wheel (e.g. 32-bit Raspberry Pi OS)"
        ) from None


def runtime_version() -> str:
    _, name = interpreter_class()
    module = "ai_edge_litert" if name == "ai-edge-litert" else "tflite_runtime"
    return f"{name} {getattr(sys.modules.get(module), '__version__', '?')}"


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hide the runtime's informational C++ log lines; pass anything else through."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (e.g. some service managers)
        yield
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not any(q in line for q in _QUIET_LINES):
                    print(line, file=sys.stderr)


def make_interpreter(model_content: bytes, num_threads: Optional[int], source: str):
    """An interpreter with tensors allocated; ``source`` names the model in error messages."""
    Interpreter, _ = interpreter_class()
    threads = num_threads if num_threads and num_threads > 0 else (os.cpu_count() or 1)
    try:
        with _quiet_native_stderr():
            interpreter = Interpreter(model_content=model_content, num_threads=threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{source}: the TFLite runtime cannot load it ({first})") from exc
    return interpreter
