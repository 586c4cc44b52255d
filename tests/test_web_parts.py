"""The web studio's parts on their own: the guard, the browser's camera source, the inbox,
the insight report. No server, no model."""

from __future__ import annotations

import base64
import threading

import numpy as np
import pytest

from edge_classifier.comms.web.camera import BrowserSource
from edge_classifier.comms.web.insight import insight
from edge_classifier.comms.web.security import MAX_FAILURES, Guard, host_name
from edge_classifier.comms.web.studio import describe
from edge_classifier.config import WebConfig
from edge_classifier.core.clock import FakeClock
from edge_classifier.errors import InboxItemNotFoundError, NoFrameYet
from edge_classifier.frames.sources import FrameSource
from edge_classifier.learning.inbox import Inbox
from edge_classifier.learning.state import StateDir

FRAME = np.full((4, 6, 3), 7, np.uint8)


# -- the guard ---------------------------------------------------------------------------------
def guard(clock=None, **web):
    fields = dict(listen="127.0.0.1:8080")
    fields.update(web)
    return Guard(WebConfig(**fields), now=(clock or FakeClock()).now)


@pytest.mark.parametrize("header, name", [("127.0.0.1:8080", "127.0.0.1"), ("[::1]:80", "::1"),
                                          ("Pi.Local", "pi.local"), ("[::1]", "::1")])
def test_host_names(header, name):
    assert host_name(header) == name


def test_without_a_password_only_addresses_localhost_and_listed_names_pass():
    g = guard(hosts="pi.lan")
    for ok in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "192.168.1.20:8080",
               "pi.lan:8080"):
        assert g.host_problem(ok) is None, ok
    assert "web.hosts" in g.host_problem("evil.example:8080")
    assert g.authenticated(None, None)  # no password: nothing to ask


def test_with_a_password_any_host_name_but_credentials_are_needed():
    g = guard(listen="0.0.0.0:8080", password="pw")
    assert g.host_problem("pi.local:8080") is None
    assert not g.authenticated(None, None)
    basic = base64.b64encode(b"anyone:pw").decode()
    assert g.authenticated(None, f"Basic {basic}") and g.authenticated(None, "Bearer pw")
    assert not g.authenticated(None, "Bearer nope") and not g.authenticated(None, "Basic !!")
    token = g.login("pw")
    assert token and g.authenticated(token, None)
    g.logout(token)
    assert not g.authenticated(token, None)


def test_sessions_expire():
    clock = FakeClock()
    g = guard(clock, password="pw")
    token = g.login("pw")
    clock.advance(8 * 24 * 3600)
    assert not g.authenticated(token, None)


def test_wrong_passwords_lock_out_for_a_minute():
    clock = FakeClock()
    g = guard(clock, password="pw")
    for _ in range(MAX_FAILURES):
        assert g.login("guess") is None
    assert g.locked_out() and g.login("pw") is None  # even the right one, for now
    clock.advance(61)
    assert not g.locked_out() and g.login("pw")


@pytest.mark.parametrize("method, origin, site, refused", [
    ("GET", "http://evil.example", None, False),  # reads are the browser's business
    ("POST", None, None, False),                  # curl, Node-RED
    ("POST", "http://127.0.0.1:8080", "same-origin", False),
    ("POST", "http://evil.example", None, True),
    ("POST", "null", None, True),
    ("DELETE", "https://127.0.0.1:8080", None, True),  # another scheme is another origin
    ("POST", None, "cross-site", True),
    ("POST", None, "same-site", True),
    ("POST", None, "none", False),                # typed into the address bar
])
def test_cross_site_rules(method, origin, site, refused):
    problem = guard().origin_problem(method, "127.0.0.1:8080", origin, site)
    assert (problem is not None) is refused


# -- the browser's camera ----------------------------------------------------------------------
class Counting(FrameSource):
    def _read(self):
        return np.zeros((2, 2, 3), np.uint8)


def test_the_newest_frame_is_read_and_none_means_no_frame_yet():
    source = BrowserSource(wait=0.01)
    with pytest.raises(NoFrameYet):
        source.read()
    source.feed(FRAME)
    source.feed(FRAME + 1)
    assert (source.read() == FRAME + 1).all() and source.skipped == 1 and source.fed == 2
    with pytest.raises(NoFrameYet):
        source.read()


def test_a_waiting_read_gets_the_frame_fed_meanwhile():
    source = BrowserSource(wait=30)
    feeder = threading.Timer(0.0, source.feed, args=(FRAME,))
    feeder.start()
    assert (source.read() == FRAME).all()
    feeder.join()


def test_the_fallback_is_read_while_no_browser_streams():
    own = Counting()
    source = BrowserSource(own, wait=0.01, patience=0.03)
    source.read()
    assert own.frames_read == 1 and not source.streaming
    source.feed(FRAME)
    assert source.streaming and (source.read() == FRAME).all()
    for _ in range(2):  # short gaps between browser frames: no fallback frame is mixed in
        with pytest.raises(NoFrameYet):
            source.read()
    assert own.frames_read == 1 and source.streaming
    source.read()  # the third empty wait: the browser stopped; the device's own frames again
    assert own.frames_read == 2 and not source.streaming
    source.close()
    assert own.closed


def test_only_rgb_frames_are_fed():
    with pytest.raises(ValueError):
        BrowserSource().feed(np.zeros((4, 4), np.uint8))


# -- the inbox ---------------------------------------------------------------------------------
def test_the_inbox_keeps_frames_durably_and_bounded(tmp_path):
    with StateDir(tmp_path / "state") as state:
        inbox = state.open_inbox(limit=2)
        first = inbox.add(FRAME, {"label": "unknown"})
        inbox.add(FRAME + 1)
        third = inbox.add(FRAME + 2)
        assert [i.id for i in inbox.items()][0] == third.id and len(inbox) == 2
        with pytest.raises(InboxItemNotFoundError):
            inbox.load(first.id)  # the oldest went
        assert (inbox.load(third.id) == FRAME + 2).all()  # lossless
    again = Inbox(tmp_path / "state" / "inbox", limit=2)
    assert [i.id for i in again.items()] == [i.id for i in inbox.items()]
    again.remove(third.id)
    assert len(again) == 1 and not (tmp_path / "state" / "inbox" / f"{third.id}.png").exists()


def test_an_interrupted_add_is_cleaned_up_on_opening(tmp_path):
    inbox = Inbox(tmp_path / "inbox")
    item = inbox.add(FRAME)
    (tmp_path / "inbox" / f"{item.id}.json").unlink()  # the crash came between the two files
    (tmp_path / "inbox" / "0123456789abcdef0123.json").write_text("{}")  # its frame is gone
    assert len(Inbox(tmp_path / "inbox")) == 0
    assert not list((tmp_path / "inbox").iterdir())


def test_ids_from_outside_name_nothing(tmp_path):
    inbox = Inbox(tmp_path / "inbox")
    for bad in ("../store.json", "", None, "0" * 20):
        with pytest.raises(InboxItemNotFoundError):
            inbox.path(bad)


def test_a_read_only_state_lists_but_keeps_nothing(tmp_path):
    with StateDir(tmp_path / "state") as state:
        state.open_inbox().add(FRAME)
    readonly = StateDir(tmp_path / "state", write=False).open_inbox()
    assert len(readonly) == 1
    with pytest.raises(Exception, match="read-only"):
        readonly.add(FRAME)


def test_an_inbox_of_size_zero_keeps_nothing(tmp_path):
    assert Inbox(tmp_path / "inbox", limit=0).add(FRAME) is None


# -- insight and words -------------------------------------------------------------------------
def test_the_confusion_matrix_and_the_most_confused_pair():
    y = np.array([0, 0, 0, 1, 1, 2])
    P = np.eye(3)[[0, 0, 1, 1, 1, 0]]  # one 0 taken for 1, the only 2 taken for 0
    report = insight(["apple", "pear", "plum"], y, P)
    assert report["matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["accuracy"] == round(4 / 6, 4)
    assert [c["accuracy"] for c in report["per_class"]] == [round(2 / 3, 4), 1.0, 0.0]
    assert report["confused"] == [  # by count, then by the share of the class
        {"class": "plum", "as": "apple", "count": 1, "share": 1.0},
        {"class": "apple", "as": "pear", "count": 1, "share": round(1 / 3, 4)}]
    assert report["few"] == ["apple", "pear", "plum"]


def test_insight_with_no_samples():
    report = insight(["apple"], np.zeros(0), np.zeros((0, 1)))
    assert report["matrix"] == [[0]] and report["accuracy"] is None
    assert report["per_class"][0]["accuracy"] is None


@pytest.mark.parametrize("prediction, words", [
    ({"label": "apple", "confidence": 0.981, "scores": {"apple": 0.981}, "unknown": False},
     "98 % sure it's apple"),
    ({"label": "unknown", "confidence": 0.41, "scores": {"apple": 0.41}, "unknown": True,
      "closest": "apple"}, "not sure: closest is apple (41 %), but not close enough"),
    ({"label": "unknown", "confidence": 0.0, "scores": {}, "unknown": True},
     "nothing taught yet: add a class and give it a few pictures"),
])
def test_a_prediction_in_words(prediction, words):
    assert describe(prediction) == words


# -- aiohttp only with the studio ----------------------------------------------------------------
def test_the_device_and_the_cli_import_without_aiohttp(tmp_path):
    """aiohttp (~14 MiB) is loaded only when the studio serves: a regression test for the
    device loop's import of the web package, which used to load it on every device."""
    import subprocess
    import sys
    code = ("import sys\n"
            "import edge_classifier.device.loop, edge_classifier.cli, edge_classifier.comms.web\n"
            "from edge_classifier.comms.web import WebTransport, Studio\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_browser_source_without_frames_says_so_to_its_idle_callback():
    """What waits for frames (the uploads' next picture) goes on while no browser streams."""
    idle = []
    source = BrowserSource(wait=0.001, idle=lambda: idle.append(1))
    with pytest.raises(NoFrameYet):
        source.read()
    assert idle == [1]
    source.feed(FRAME)
    assert source.read().shape == FRAME.shape and idle == [1]  # a frame: no call
