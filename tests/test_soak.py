"""The short soak CI runs: full speed, broker restarts, captures; memory must not grow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "soak.py"


def test_short_soak(models_dir):
    proc = subprocess.run([sys.executable, str(TOOL), "--seconds", "15", "--restart-every", "5",
                           "--capture-every", "0.5", "--max-per-class", "5"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["frames"] > 0 and result["broker_restarts"] >= 2
    assert result["reconnects"] >= 2  # it came back after every restart
    assert result["captures"] >= 10 and result["capture_errors"] == 0
    assert max(result["samples_per_class"].values()) <= 5  # the per-class limit held
    assert result["received_by_subscriber"] >= 0.9 * result["published"]
    assert result["memory_grows"] is False
