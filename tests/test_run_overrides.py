"""``edge-classifier run --broker URL`` and ``--model NAME`` override the config file, through
``cli.main`` with a replayed photo, the real models and a real mosquitto."""

from __future__ import annotations

import json
import os
import pty
import threading

import pytest
from mosquitto import AVAILABILITY, PREDICTION, Observer, free_port, running_broker
from waiting import TIMEOUT

from edge_classifier import cli

broker = pytest.fixture(running_broker, name="broker")
CONFIG_MODEL = "mobilenet_v2_1.0_224_quant"
SMALL_MODEL = "mobilenet_v1_0.25_128_quant"


def write_config(tmp_path, text=""):
    path = tmp_path / "c.toml"
    path.write_text('device_id = "dev1"\n' + text)
    return path


def run_args(tmp_path, sample, config, *extra, state="state"):
    return ["run", "--config", str(config), "--state", str(tmp_path / state),
            "--source", f"replay:{sample('cat.bmp')}", *extra]


def predictions(out: str):
    lines = [json.loads(line) for line in out.splitlines()]
    return [m["payload"] for m in lines if m["topic"] == PREDICTION]


def test_run_model_overrides_the_config(tmp_path, sample, models_dir, capsys):
    config = write_config(tmp_path, f'keyboard = "off"\n[model]\nname = "{CONFIG_MODEL}"\n'
                                    '[mqtt]\nprediction_interval = 0.0\n')
    assert cli.main(run_args(tmp_path, sample, config, "--frames", "2")) == 0
    assert [p["model"] for p in predictions(capsys.readouterr().out)] == [CONFIG_MODEL] * 2
    assert cli.main(run_args(tmp_path, sample, config, "--model", SMALL_MODEL, "--frames", "2",
                             state="other")) == 0  # a state belongs to one model
    assert [p["model"] for p in predictions(capsys.readouterr().out)] == [SMALL_MODEL] * 2


def test_run_broker_overrides_the_config(broker, tmp_path, sample, models_dir, monkeypatch,
                                         capsys):
    """The config names a broker where nothing listens; --broker's is used. The run is long
    (--frames is only an upper bound) and ends with ``q`` on its terminal once the broker has
    seen a prediction, so it does not depend on how fast the device connects."""
    nowhere = f"mqtt://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, f'keyboard = "on"\n[mqtt]\nbroker = "{nowhere}"\n'
                                    'reconnect_min = 0.05\nreconnect_max = 0.2\n'
                                    'prediction_interval = 0.0\n')
    master, slave = pty.openpty()
    terminal = os.fdopen(slave, "rb", buffering=0)
    monkeypatch.setattr("sys.stdin", terminal)  # the run's keyboard control reads this
    result = {}
    with Observer(broker, "edge_classifier/dev1/#") as seen:
        runner = threading.Thread(target=lambda: result.update(code=cli.main(run_args(
            tmp_path, sample, config, "--broker", broker.url, "--model", SMALL_MODEL,
            "--frames", "100000"))), daemon=True)
        runner.start()
        try:
            seen.wait_for(AVAILABILITY, "online")
            first = json.loads(seen.wait_for(PREDICTION).payload)
            mark = seen.mark()
        finally:
            os.write(master, b"q")  # the keyboard's Stop: a clean shutdown
            runner.join(TIMEOUT)
        seen.wait_for(AVAILABILITY, "offline", after=mark)
    terminal.close()
    os.close(master)
    assert not runner.is_alive() and result == {"code": 0}
    assert first["model"] == SMALL_MODEL
    assert first["frame"] < 100000  # stopped by q, long before --frames
    assert capsys.readouterr().out == ""  # nothing went to standard output instead
