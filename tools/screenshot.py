#!/usr/bin/env python3
"""Render the web studio at desktop and phone widths with headless Chromium.

Without ``--url`` it starts a studio of its own: a device on a temporary state, taught three
classes from the sample photos (as the demo does), replaying them, with one frame in the
inbox. Writes ``studio-desktop.png`` and ``studio-phone.png`` (the whole page) into
``--out`` and prints their paths. Needs Debian's ``chromium`` and ``chromium-driver`` and
the ``selenium`` package (``pip install -e ".[test]"``)::

    python tools/screenshot.py --out /tmp/shots
    python tools/screenshot.py --url http://127.0.0.1:8080/ --out /tmp/shots
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import threading
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SIZES = {"desktop": (1280, 900, 1, False), "phone": (390, 844, 2, True)}
TEACH = [("bird", ["bird.bmp", "parrot.jpg"]), ("cat", ["cat.bmp"]), ("hot dog", ["hot_dog.jpg"])]
SHOWN = "parrot.jpg"  # what the camera sees while the pictures are taken


def browser(user_data: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={user_data}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@contextlib.contextmanager
def own_studio():
    """A device with the studio on a free port, taught from the sample photos."""
    from edge_classifier.backbone.fetch import installed_path
    from edge_classifier.backbone.manifest import load_manifest
    from edge_classifier.config import Config, SmoothingConfig, WebConfig
    from edge_classifier.device.loop import Device
    from edge_classifier.frames.images import load_image
    from edge_classifier.frames.sources import FrameSource

    manifest = load_manifest()
    photos = {p: load_image(installed_path(manifest.get(p)))
              for p in {p for _, ps in TEACH for p in ps} | {SHOWN, "sunflower.bmp"}}

    class Still(FrameSource):  # one photo, 10 frames a second
        def _read(self):
            return photos[SHOWN].copy()

    config = Config(device_id="kitchen-cam", keyboard="off",
                    smoothing=SmoothingConfig(frames=3, threshold=0.7),
                    web=WebConfig(listen="127.0.0.1:0", inbox_interval=3600))
    with tempfile.TemporaryDirectory(prefix="studio-shot-") as state:
        saved, sys.stdout = sys.stdout, io.StringIO()  # the stdout transport's JSON lines
        try:
            device = Device(config, source=Still(fps=10), state_dir=state)
            for name, taught in TEACH:
                for p in taught:
                    device.learner.capture(name, photos[p])
            device.web.inbox.add(photos["sunflower.bmp"], {"label": "unknown",
                                                           "closest": "bird",
                                                           "confidence": 0.41,
                                                           "unknown": True})
            device.bus.set_classes(device.store.classes)
            thread = threading.Thread(target=device.run, daemon=True)
            thread.start()
            try:
                yield device.web.url
            finally:
                device.stop()
                thread.join(30)
                device.close()
        finally:
            sys.stdout = saved


def shoot(url: str, out: Path) -> list:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    written = []
    with tempfile.TemporaryDirectory(prefix="studio-chromium-") as profile:
        driver = browser(profile)
        try:
            for name, (width, height, scale, mobile) in SIZES.items():
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": width, "height": height, "deviceScaleFactor": scale,
                    "mobile": mobile})
                driver.get(url)
                wait = WebDriverWait(driver, 60)
                wait.until(ec.presence_of_element_located(
                    (By.CSS_SELECTOR, "[data-testid=score-bar]")))
                wait.until(lambda d: d.execute_script(
                    "return document.querySelector('#matrix table') !== null && "
                    "document.getElementById('live-view').naturalWidth > 0"))
                full = driver.execute_script("return document.documentElement.scrollHeight")
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": width, "height": full, "deviceScaleFactor": scale,
                    "mobile": mobile})
                wait.until(lambda d: d.execute_script(
                    "return document.readyState === 'complete'"))
                path = out / f"studio-{name}.png"
                driver.save_screenshot(str(path))
                written.append(path)
        finally:
            driver.quit()
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running studio (default: start one)")
    parser.add_argument("--out", default=".", help="folder for the PNG files (default: here)")
    args = parser.parse_args(argv)
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(exe):
            print(f"screenshot: {exe} is missing: apt-get install chromium chromium-driver",
                  file=sys.stderr)
            return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.url:
        paths = shoot(args.url, out)
    else:
        with own_studio() as url:
            paths = shoot(url, out)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
