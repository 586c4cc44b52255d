"""``run --web`` and ``demo --web`` from the command line, as a user starts them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
from webkit import TIMEOUT

from edge_classifier.cli import main

SCRIPT = [sys.executable, "-m", "edge_classifier"]


def test_a_studio_open_to_the_network_without_a_password_is_refused(tmp_path, capsys):
    code = main(["run", "--web", "0.0.0.0:8080", "--state", str(tmp_path / "state"),
                 "--source", "replay:nothing.jpg"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("edge-classifier: error: web.listen: '0.0.0.0:8080' can be reached from "
                          "other machines: set web.password")
    assert not (tmp_path / "state").exists()  # refused before anything started


@pytest.mark.parametrize("listen, problem", [("web", "the port must be a number"),
                                             ("[::1:80", "goes in brackets")])
def test_a_bad_address_is_a_usage_error(tmp_path, capsys, listen, problem):
    assert main(["demo", "--web", listen, "--state", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1


class Process:
    """The CLI in a subprocess; its log (standard error) read by a thread."""

    def __init__(self, *argv, env=None):
        self.proc = subprocess.Popen([*SCRIPT, *argv], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **(env or {})))
        self.lines = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append(None)  # ended
            self.changed.notify_all()

    def wait_for(self, pattern):
        with self.changed:
            found = self.changed.wait_for(
                lambda: any(line is None or re.search(pattern, line) for line in self.lines),
                TIMEOUT)
            match = next((re.search(pattern, line) for line in self.lines
                          if line is not None and re.search(pattern, line)), None)
        assert found and match, f"{pattern!r} not in the log:\n{''.join(filter(None, self.lines))}"
        return match

    def stop(self, sig):
        self.proc.send_signal(sig)
        return self.proc.wait(TIMEOUT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


def status(url):
    with urllib.request.urlopen(url + "api/status", timeout=TIMEOUT) as r:
        return json.loads(r.read())


def test_demo_with_the_studio_runs_until_ctrl_c(tmp_path, models_dir):
    demo = Process("demo", "--web", "127.0.0.1:0", "--state", str(tmp_path / "state"),
                   "--threads", "1")
    try:
        url = demo.wait_for(r"web studio on (http://127\.0\.0\.1:\d+/)").group(1)
        demo.wait_for(r"demo: the studio is at")  # the script is done, the photos go round
        assert status(url)["classes"] == {"bird": 2, "cat": 1, "hot dog": 1}
        assert demo.proc.poll() is None  # still running
        assert demo.stop(signal.SIGINT) == 0
    finally:
        demo.kill()
    assert any(line and "grace_hopper.bmp" in line for line in demo.lines)  # the story


def test_run_with_the_studio_logs_its_address_and_stops_on_sigterm(tmp_path, sample):
    run = Process("run", "--web", "127.0.0.1:0", "--state", str(tmp_path / "state"),
                  "--source", f"replay:{sample('cat.bmp')}")
    try:
        url = run.wait_for(r"web studio on (http://127\.0\.0\.1:\d+/)").group(1)
        request = urllib.request.Request(url + "api/classes/cat/capture", data=b"{}",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as r:
            assert json.loads(r.read())["samples"] == 1
        assert run.stop(signal.SIGTERM) == 0
    finally:
        run.kill()
