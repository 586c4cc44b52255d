"""The package imports on a machine with none of the Pi parts and no TFLite runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


BLOCK = """
import sys
for name in ("ai_edge_litert", "tflite_runtime", "picamera2", "libcamera", "gpiozero", "paho"):
    sys.modules[name] = None  # any import of them now raises ImportError
"""


def test_package_imports_without_runtime_or_hardware_libraries():
    proc = run_python(BLOCK + """
import pkgutil, importlib, edge_classifier
for info in pkgutil.walk_packages(edge_classifier.__path__, "edge_classifier."):
    if info.name.endswith("__main__"):
        continue
    importlib.import_module(info.name)
print("ok")
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_missing_runtime_is_a_clear_error():
    proc = run_python(BLOCK + """
from edge_classifier.backbone.runtime import interpreter_class
from edge_classifier.errors import RuntimeMissingError
try:
    interpreter_class()
except RuntimeMissingError as exc:
    print(exc)
""")
    assert "install ai-edge-litert" in proc.stdout
