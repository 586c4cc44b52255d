"""The web studio's part of ``tools/bench_loop.py --web``: a browser watching the live view,
the latency from a frame to its bar, and what the studio adds to the device's memory.

    watcher = Watcher(device.web.url)           # headless Chromium on the studio page
    watcher.rendered()                          # [(frame number, wall time the bars showed it)]
    watcher.cpu_seconds()                       # CPU time the watcher used so far
    rss_cost(frames=200)                        # {"aiohttp_import_mib", "serving_mib", ...}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) used so far by process ``root`` and its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append((int(entry), fields))
    total, todo = 0.0, [root]
    with open(f"/proc/{root}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total += int(fields[11]) + int(fields[12])
    while todo:
        for pid, fields in children.get(todo.pop(), []):
            total += int(fields[11]) + int(fields[12])
            todo.append(pid)
    return total / os.sysconf("SC_CLK_TCK")


def chromium(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Watcher:
    """Headless Chromium showing the studio until the live view and the bars are up."""

    def __init__(self, url: str):
        self._profile = tempfile.TemporaryDirectory(prefix="bench-chromium-")
        self.driver = chromium(self._profile.name)
        self.driver.get(url)

    def ready(self) -> bool:
        """The page shows the live view and the bars (frames must be flowing)."""
        return bool(self.driver.execute_script(
            "return document.getElementById('live-view').naturalWidth > 0 && "
            "document.querySelectorAll('#bars [data-testid=score-bar]').length > 0"))

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError("the studio page did not show the live view")
            time.sleep(0.1)

    def rendered(self):
        return [tuple(r) for r in self.driver.execute_script("return studio.rendered")]

    def clear(self):
        self.driver.execute_script("studio.rendered = []; studio.latency = [];")

    def cpu_seconds(self) -> float:
        """CPU time the browser (all its processes) has used so far."""
        return cpu_seconds(self.driver.service.process.pid)

    def close(self):
        self.driver.quit()
        self._profile.cleanup()


_READER = textwrap.dedent("""
    import json, sys, threading, time, urllib.request
    url = sys.argv[1]
    def mjpeg():
        with urllib.request.urlopen(url + "api/stream.mjpeg") as r:
            while r.read(65536):
                pass
    threading.Thread(target=mjpeg, daemon=True).start()
    with urllib.request.urlopen(url + "api/events") as r:
        kind = None
        for line in r:
            line = line.decode()
            if line.startswith("event: "):
                kind = line[7:].strip()
            elif line.startswith("data: ") and kind == "prediction":
                print(json.loads(line[6:])["frame"], time.time(), flush=True)
""")


class StreamWatcher:
    """A client that only reads the live view and the event stream (as a browser on a phone
    would load the device): the device's side of watching, without a browser's rendering on
    this machine. ``rendered()``: when each prediction arrived."""

    def __init__(self, url: str):
        self.proc = subprocess.Popen([sys.executable, "-c", _READER, url],
                                     stdout=subprocess.PIPE, text=True)
        self.lines = []
        import threading
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self):
        for line in self.proc.stdout:
            frame, at = line.split()
            self.lines.append((int(frame), float(at)))

    def ready(self) -> bool:
        return bool(self.lines)

    def rendered(self):
        return list(self.lines)

    def clear(self):
        self.lines.clear()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def latency_ms(rendered, read_at):
    """Median and 90th percentile (ms) from reading a frame to its bars being drawn."""
    gaps = sorted((t - read_at[f]) * 1000 for f, t in rendered if f in read_at)
    if not gaps:
        return {"frames_drawn": 0}
    return {"frames_drawn": len(gaps), "median_ms": round(gaps[len(gaps) // 2], 1),
            "p90_ms": round(gaps[int(len(gaps) * 0.9)], 1), "target_median_ms": 200}


_CHILD = textwrap.dedent("""
    import sys, threading, time
    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
    mode = sys.argv[1]
    import numpy, PIL.Image, paho.mqtt.client, ai_edge_litert.interpreter  # the device's own
    if mode == "import":
        before = rss()
        import aiohttp.web
        print(round(rss() - before, 1))
        sys.exit(0)
    sys.path.insert(0, sys.argv[3])
    from _common import memory_source, decoded_frames
    from edge_classifier.backbone.model import Backbone
    from edge_classifier.config import Config, MqttConfig, WebConfig
    from edge_classifier.device.loop import Device
    import tempfile, io, contextlib
    web = WebConfig(listen="127.0.0.1:0", inbox_size=0) if mode == "on" else WebConfig()
    config = Config(device_id="bench", keyboard="off", web=web,
                    mqtt=MqttConfig(prediction_interval=3600, stats_interval=3600))
    with tempfile.TemporaryDirectory() as state, contextlib.redirect_stdout(io.StringIO()):
        device = Device(config, source=memory_source(decoded_frames()), state_dir=state)
        for name, frame in zip(("a", "b", "c"), decoded_frames()):
            device.learner.capture(name, frame)
        loop = threading.Thread(target=device.run, daemon=True)
        loop.start()
        if device.web is not None:
            while device.web._aloop is None:
                time.sleep(0.01)
            sys.stderr.write(device.web.url + "\\n"); sys.stderr.flush()
        sys.stdin.readline()  # the watcher (if any) shows the page
        target = device.counters.frames + int(sys.argv[2])
        while device.counters.frames < target:
            time.sleep(0.05)
        print(round(rss(), 1), int("aiohttp" in sys.modules), file=sys.__stdout__)
        device.stop(); loop.join(30); device.close()
""")


def _child(mode: str, frames: int, watch: bool = False):
    tools = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, mode, str(frames), tools],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watcher = None
    try:
        if mode == "on":
            url = ""
            while not url.startswith("http"):  # past the log's warnings
                line = proc.stderr.readline()
                if not line:
                    raise RuntimeError("the rss child ended before serving")
                url = line.strip()
            if watch:
                watcher = Watcher(url)
                watcher.wait_ready()
        if mode != "import":
            proc.stdin.write("go\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=600)
    finally:
        if watcher is not None:
            watcher.close()
    if proc.returncode != 0:
        raise RuntimeError(f"rss child {mode} failed: {err[-2000:]}")
    fields = out.strip().splitlines()[-1].split()
    return float(fields[0]) if mode == "import" else (float(fields[0]), fields[1] == "1")


def rss_cost(frames: int = 200) -> dict:
    """What the studio adds to a device's resident memory, in separate processes: RSS after
    ``frames`` frames with the studio served and watched by a browser, minus without the
    studio (which loads no aiohttp: ``off_loads_aiohttp`` says whether that holds), and, for
    the record, what importing aiohttp alone costs on top of the device's own imports."""
    imported = _child("import", 0)
    off, off_aiohttp = _child("off", frames)
    on, _ = _child("on", frames, watch=True)
    added = on - off if not off_aiohttp else imported + on - off
    return {"aiohttp_import_mib": imported, "device_without_web_mib": off,
            "off_loads_aiohttp": off_aiohttp, "device_with_web_watched_mib": on,
            "added_mib": round(added, 1), "target_added_mib": 25}


if __name__ == "__main__":  # a quick look: python tools/_web.py
    t0 = time.time()
    print(json.dumps(rss_cost(), indent=2), f"({time.time() - t0:.0f} s)")
