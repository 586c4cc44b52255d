#!/usr/bin/env python3
"""Render the web studio at desktop and phone widths with headless Chromium.

Without ``--url`` it starts a studio of its own: a device on a temporary state, taught three
classes from the sample photos (as the demo does), replaying them, with one frame in the
inbox. ``--drawn`` teaches it pictures drawn here instead (a red ball, a blue box, a green
tent: simple shapes, no photo of anyone's), which is what the README shows: the sample photos
are Open Images (CC BY 2.0) and are not committed. ``--palette`` writes 256-colour PNGs (a
fifth of the size). Writes ``studio-desktop.png`` and ``studio-phone.png`` (the whole page)
into ``--out`` and prints their paths. Needs Debian's ``chromium`` and ``chromium-driver``
and the ``selenium`` package (``pip install -e ".[test]"``)::

    python tools/screenshot.py --out /tmp/shots
    python tools/screenshot.py --drawn --palette --out docs/   # docs/studio-desktop.png
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


DRAWN_TEACH = [("ball", ["ball"] * 6), ("box", ["box"] * 6), ("tent", ["tent"] * 6)]
DRAWN_SHOWN, DRAWN_UNSURE = "ball", "star"


def drawn(kind: str, seed: int):
    """A 320x240 picture of a simple shape drawn with PIL, placed and sized by ``seed``."""
    import numpy as np
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (320, 240), tuple(int(v) for v in rng.integers(205, 240, 3)))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 170, 320, 240), fill=(168, 140, 110))  # a table
    x, y, r = 160 + rng.integers(-40, 40), 120 + rng.integers(-15, 15), rng.integers(45, 65)
    if kind == "ball":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(214, 40, 40), outline=(120, 10, 10),
                     width=3)
        draw.ellipse((x - r // 2, y - r // 2, x - r // 5, y - r // 5), fill=(250, 160, 160))
    elif kind == "box":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=(40, 90, 200), outline=(15, 40, 110),
                       width=4)
        draw.line((x - r, y, x + r, y), fill=(200, 210, 240), width=6)
    elif kind == "tent":
        draw.polygon([(x, y - r), (x - r - 10, y + r), (x + r + 10, y + r)], fill=(40, 150, 60),
                     outline=(10, 70, 20))
        draw.polygon([(x, y), (x - 14, y + r), (x + 14, y + r)], fill=(20, 60, 25))
    else:  # a star, taught to no class: the inbox's unsure frame
        points = [(x + (r if i % 2 == 0 else r // 2) * np.cos(np.pi * i / 5 - np.pi / 2),
                   y + (r if i % 2 == 0 else r // 2) * np.sin(np.pi * i / 5 - np.pi / 2))
                  for i in range(10)]
        draw.polygon(points, fill=(240, 200, 30), outline=(150, 110, 0))
    return np.asarray(image)


def sample_photos():
    from edge_classifier.backbone.fetch import installed_path
    from edge_classifier.backbone.manifest import load_manifest
    from edge_classifier.frames.images import load_image
    manifest = load_manifest()
    names = {p for _, ps in TEACH for p in ps} | {SHOWN, "sunflower.bmp"}
    return TEACH, {p: [load_image(installed_path(manifest.get(p)))] for p in names}, SHOWN, \
        "sunflower.bmp"


def drawn_pictures():
    pictures = {k: [drawn(k, seed) for seed in range(6)] for k in ("ball", "box", "tent")}
    pictures["star"] = [drawn("star", 1)]
    return DRAWN_TEACH, pictures, DRAWN_SHOWN, DRAWN_UNSURE


@contextlib.contextmanager
def own_studio(pictures_drawn: bool = False):
    """A device with the studio on a free port, taught from the sample photos (or from
    pictures drawn here)."""
    from edge_classifier.config import Config, SmoothingConfig, WebConfig
    from edge_classifier.device.loop import Device
    from edge_classifier.frames.sources import FrameSource

    teach, pictures, shown, unsure = drawn_pictures() if pictures_drawn else sample_photos()
    photos = {name: views[0] for name, views in pictures.items()}

    class Still(FrameSource):  # one picture, 10 frames a second
        def _read(self):
            return photos[shown].copy()

    config = Config(device_id="kitchen-cam", keyboard="off",
                    smoothing=SmoothingConfig(frames=3, threshold=0.7),
                    web=WebConfig(listen="127.0.0.1:0", inbox_interval=3600))
    with tempfile.TemporaryDirectory(prefix="studio-shot-") as state:
        saved, sys.stdout = sys.stdout, io.StringIO()  # the stdout transport's JSON lines
        try:
            device = Device(config, source=Still(fps=10), state_dir=state)
            for name, taught in teach:
                for i, p in enumerate(taught):
                    device.learner.capture(name, pictures[p][i % len(pictures[p])])
            device.web.inbox.add(photos[unsure], {"label": "unknown", "closest": teach[0][0],
                                                  "confidence": 0.41, "unknown": True})
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


def to_palette(path: Path) -> None:
    """Rewrite a screenshot as a 256-colour PNG (a page is flat colours: it barely shows)."""
    from PIL import Image
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=0)
    small.save(path, optimize=True)


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
    parser.add_argument("--drawn", action="store_true",
                        help="teach pictures drawn here, not the sample photos (no --url)")
    parser.add_argument("--palette", action="store_true", help="256-colour PNGs (smaller)")
    args = parser.parse_args(argv)
    if args.drawn and args.url:
        parser.error("--drawn starts its own studio; it does not go with --url")
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
        with own_studio(args.drawn) as url:
            paths = shoot(url, out)
    for path in paths:
        if args.palette:
            to_palette(path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
