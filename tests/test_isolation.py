"""The suite's own hygiene: it never uses the user's data directory, whoever runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def test_without_edge_classifier_home_the_suite_uses_the_checkouts_data_dir(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("EDGE_CLASSIFIER_HOME", "XDG_DATA_HOME", "STATE_DIRECTORY")}
    env["HOME"] = str(tmp_path)  # a user whose ~/.local/share must stay untouched
    probe = ("import conftest\n"
             "from edge_classifier.core import paths\n"
             "print(paths.data_home(), paths.default_state_dir(), sep='\\n')\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(REPO / ".data"), str(REPO / ".data" / "state")]
    assert not (tmp_path / ".local").exists()


def test_an_explicit_edge_classifier_home_is_kept(tmp_path):
    env = dict(os.environ, EDGE_CLASSIFIER_HOME=str(tmp_path / "elsewhere"))
    probe = "import conftest, os; print(os.environ['EDGE_CLASSIFIER_HOME'])"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == str(tmp_path / "elsewhere"), proc.stderr
