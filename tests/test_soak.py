"""The short soak CI runs: full speed, broker restarts, captures; memory must not grow.

Scheduled by frame count, not by the clock (see tools/soak.py), so the numbers below are exact
on any machine; the subprocess timeout is only an upper bound for a hung run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "soak.py"


def test_short_soak(models_dir):
    proc = subprocess.run([sys.executable, str(TOOL), "--frames", "300", "--restart-every", "100",
                           "--capture-every", "10", "--max-per-class", "5"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["frames"] == 300 and result["failure"] is None
    assert result["broker_restarts"] == 2  # at frames 100 and 200
    assert result["reconnects"] >= 2  # it came back after every restart
    assert result["captures"] == 30 and result["capture_errors"] == 0  # one every 10 frames
    assert max(result["samples_per_class"].values()) <= 5  # the per-class limit held
    assert result["received_by_subscriber"] >= 0.9 * result["published"]
    assert result["memory_grows"] is False
