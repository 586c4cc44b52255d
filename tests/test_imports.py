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


# -- the shape of the package: stages along the data flow ---------------------------------------
import ast  # noqa: E402
from pathlib import Path  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "edge_classifier"
#: A module may import only from its own stage or the ones before it (ARCHITECTURE.md).
STAGES = ("errors", "core", "frames", "backbone", "learning", "datasets", "config", "comms",
          "device", "cli")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _package_imports(path: Path):
    """(imported module, line, at module level?) for every import of the package."""
    tree = ast.parse(path.read_text("utf-8"))
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            names = ["edge_classifier.?relative"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "edge_classifier" or name.startswith("edge_classifier."):
                yield name, node.lineno, id(node) in top


def _stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return len(STAGES)  # the package root and `python -m`: above everything
    return STAGES.index(parts[1]) if parts[1] in STAGES else -1


def test_modules_import_only_from_their_stage_or_below():
    known = {m for m, _ in _modules()}
    wrong = []
    for module, path in _modules():
        for name, line, _ in _package_imports(path):
            if name not in known and name.rpartition(".")[0] in known:
                name = name.rpartition(".")[0]  # `from pkg.mod import thing`
            if name not in known or name == "edge_classifier":
                continue
            if module == "edge_classifier" and name == "edge_classifier.errors":
                continue
            if _stage(name) > _stage(module):
                wrong.append(f"{path.name}:{line} ({module}) imports {name}")
    assert wrong == []


def test_nothing_imports_the_cli_and_imports_sit_at_the_top():
    offenders = []
    for module, path in _modules():
        for name, line, at_top in _package_imports(path):
            if name.startswith("edge_classifier.cli") and not module.startswith(
                    ("edge_classifier.cli", "edge_classifier.__main__")):
                offenders.append(f"{module}:{line} imports the CLI")
            if not at_top and not name.endswith("?relative"):
                offenders.append(f"{module}:{line} imports {name} inside a function")
    assert offenders == []


def test_there_is_no_import_cycle():
    known = {m for m, _ in _modules()}
    graph = {}
    for module, path in _modules():
        deps = set()
        for name, _, _ in _package_imports(path):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                deps.add(name)
        graph[module] = deps
    done, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if not d.startswith(m + "."):  # a package importing its own submodules
                visit(d)
        stack.pop()
        done.add(m)
    for m in sorted(graph):
        visit(m)


def test_tools_use_no_private_or_cli_code():
    tools = Path(__file__).resolve().parents[1] / "tools"
    bad = []
    for path in sorted(tools.glob("*.py")):
        for name, line, _ in _package_imports(path):
            if ".cli" in name or any(part.startswith("_") for part in name.split(".")[1:]):
                bad.append(f"{path.name}:{line} imports {name}")
    assert bad == []
