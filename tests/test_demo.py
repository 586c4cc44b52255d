"""The built-in demo: the README's main-job command, end to end."""

from __future__ import annotations

import json

from edge_classifier import cli

from conftest import mirror_dir


def test_demo_teaches_predicts_and_publishes(models_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(tmp_path / "home"))  # fetches like a newcomer
    mirror = mirror_dir()
    assert cli.main(["demo"] + (["--mirror", str(mirror)] if mirror else [])) == 0
    out, err = capsys.readouterr()
    shown = {}
    for line in err.splitlines():
        if " -> " in line:
            photo, result = line.split(" -> ")
            shown[photo.strip()] = result.strip()
    assert shown["cat.bmp"].startswith("cat ")
    assert shown["parrot.jpg"].startswith("bird ")
    assert shown["hot_dog.jpg"].startswith("hot dog ")
    assert shown["sunflower.bmp"].startswith("unknown")  # never taught
    lines = [json.loads(line) for line in out.splitlines()]
    states = [m["payload"] for m in lines if m["topic"] == "edge_classifier/demo/state"]
    assert {"cat", "bird", "hot dog", "unknown"} <= set(states)
    assert lines[-1] == {"topic": "edge_classifier/demo/availability", "payload": "offline",
                         "retained": True}
