"""The web studio in a real browser: Debian's headless Chromium driven by Selenium, against a
real device (the real model, sample photos) serving the page on 127.0.0.1.

Every wait is a condition with a generous upper bound (WebDriverWait); nothing sleeps and no
duration is asserted.
"""

from __future__ import annotations

import io
import os
import shutil

import pytest
from PIL import Image
from webkit import studio_factory, TIMEOUT, web_config

from edge_classifier.config import SmoothingConfig, SourceConfig

selenium = pytest.importorskip("selenium", reason="pip install -e '.[test]' (selenium)")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (NoAlertPresentException,  # noqa: E402
                                        StaleElementReferenceException)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
           "chromium-driver; .ci/run does)")
TAUGHT = (("cat", "cat.bmp"), ("bird", "bird.bmp"))
XSS = "<img src=x onerror=alert(1)>"


def chromium(profile, *extra):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                 "--window-size=1280,1000", f"--user-data-dir={profile}", *extra):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


studio = pytest.fixture(studio_factory, name="studio")


def until(driver, condition, what):
    """Wait for ``condition``; an element the page replaced meanwhile just means "not yet"."""
    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d), message=f"timed out waiting for {what}")


def by_id(driver, testid, root=None):
    return (root or driver).find_element(By.CSS_SELECTOR, f"[data-testid={testid}]")


def card(driver, name):
    """The class card of ``name`` (compared as text: names may hold any character), or None."""
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=class-card]')]"
        ".find(c => c.dataset.class === arguments[0]) || null", name)


def count_on_page(driver, name):
    c = card(driver, name)
    return int(by_id(driver, "sample-count", c).text) if c is not None else None


def label(driver):
    return by_id(driver, "prediction-label").text


def open_page(driver, s):
    driver.get(s.url)
    until(driver, lambda d: d.find_element(By.ID, "link").text == "live", "the event stream")


def sample_files(device, name):
    return [p for p in (device.store.root / "samples").glob("*/*.npy")
            if (p.parent / "name").read_text("utf-8") == name]


def settled(s, name):
    """The device has no capture of ``name`` left to do: its count stays put over frames."""
    before = s.client.status()["classes"].get(name)
    frames = s.device.counters.frames
    s.wait(lambda: s.device.counters.frames >= frames + 3, "three more frames")
    return before == s.client.status()["classes"].get(name)


def test_the_page_loads_and_the_label_follows_the_frames(browser, studio):
    s = studio(teach=TAUGHT)
    open_page(browser, s)
    until(browser, lambda d: label(d) == "cat", "the label cat")
    assert count_on_page(browser, "cat") == 1 and count_on_page(browser, "bird") == 1
    bars = [b.get_attribute("data-class")
            for b in browser.find_elements(By.CSS_SELECTOR, "#bars [data-testid=score-bar]")]
    assert bars == ["cat", "bird"]
    until(browser, lambda d: d.execute_script(
        "return document.getElementById('live-view').naturalWidth") > 0, "the live view")
    s.photos.show("bird.bmp")
    until(browser, lambda d: label(d) == "bird", "the label bird")


def test_a_click_on_capture_adds_one_sample_on_the_page_and_on_disk(browser, studio):
    s = studio()
    open_page(browser, s)
    by_id(browser, "new-class").send_keys("apple")
    by_id(browser, "add-class").click()
    until(browser, lambda d: count_on_page(d, "apple") == 0, "the new class")
    by_id(browser, "capture-button", card(browser, "apple")).click()
    until(browser, lambda d: count_on_page(d, "apple") == 1, "one sample on the page")
    assert settled(s, "apple")
    assert count_on_page(browser, "apple") == 1 and len(sample_files(s.device, "apple")) == 1
    until(browser, lambda d: len(card(d, "apple").find_elements(
        By.CSS_SELECTOR, "[data-testid=thumbnail] img")) == 1, "its thumbnail")


def test_holding_capture_records_several_samples(browser, studio):
    s = studio(teach=TAUGHT)
    open_page(browser, s)
    until(browser, lambda d: card(d, "cat") is not None, "the cat card")
    button = by_id(browser, "capture-button", card(browser, "cat"))
    ActionChains(browser).click_and_hold(button).perform()
    until(browser, lambda d: count_on_page(d, "cat") >= 4, "samples while held")
    ActionChains(browser).release(button).perform()
    s.wait(lambda: settled(s, "cat"), "the captures to stop after the release")
    stored = s.client.status()["classes"]["cat"]
    assert stored >= 4 and len(sample_files(s.device, "cat")) == stored
    until(browser, lambda d: count_on_page(d, "cat") == stored, "the page to agree")


def test_uploading_three_files_creates_a_class(browser, studio, sample, tmp_path):
    s = studio()
    paths = []
    for i, photo in enumerate(("cat.bmp", "owl.jpg", "bird.bmp")):
        path = tmp_path / f"pet{i}.jpg"
        Image.open(sample(photo)).convert("RGB").save(path)
        paths.append(str(path))
    open_page(browser, s)
    by_id(browser, "upload-class").send_keys("pets")
    by_id(browser, "upload-input").send_keys("\n".join(paths))
    until(browser, lambda d: count_on_page(d, "pets") == 3, "a class of three")
    until(browser, lambda d: "3 added to pets" in by_id(d, "upload-result").text, "the report")
    assert s.client.status()["classes"] == {"pets": 3}


def test_a_test_picture_shows_its_label_in_words(browser, studio, sample, tmp_path):
    s = studio(teach=TAUGHT)
    path = tmp_path / "which.png"
    Image.open(sample("bird.bmp")).save(path)
    open_page(browser, s)
    by_id(browser, "test-input").send_keys(str(path))
    until(browser, lambda d: by_id(d, "test-result").text.endswith("% sure it's bird"),
          "the verdict")
    bars = browser.find_elements(By.CSS_SELECTOR, "#test-bars [data-testid=score-bar]")
    assert sorted(b.get_attribute("data-class") for b in bars) == ["bird", "cat"]
    assert s.client.status()["classes"] == {"cat": 1, "bird": 1}  # nothing stored


def test_rename_delete_and_a_thumbnail_click_delete(browser, studio):
    s = studio(teach=TAUGHT + (("cat", "cat.bmp"),))
    open_page(browser, s)
    until(browser, lambda d: count_on_page(d, "cat") == 2, "the cat card")
    by_id(browser, "rename-button", card(browser, "cat")).click()
    field = by_id(browser, "dialog-input")
    field.clear()
    field.send_keys("kitty")
    by_id(browser, "dialog-ok").click()
    until(browser, lambda d: card(d, "kitty") is not None and card(d, "cat") is None, "kitty")
    assert s.client.status()["classes"] == {"kitty": 2, "bird": 1}
    thumb = by_id(browser, "thumbnail", card(browser, "kitty"))
    thumb.click()  # arms it
    assert count_on_page(browser, "kitty") == 2
    thumb.click()  # deletes it
    until(browser, lambda d: count_on_page(d, "kitty") == 1, "one sample fewer")
    by_id(browser, "delete-button", card(browser, "bird")).click()
    by_id(browser, "dialog-ok").click()
    until(browser, lambda d: card(d, "bird") is None, "the bird card to go")
    assert s.client.status()["classes"] == {"kitty": 1}


def test_an_inbox_frame_is_filed_into_a_class(browser, studio):
    config = web_config().replace(smoothing=SmoothingConfig(frames=2, threshold=0.99))
    s = studio(config=config, teach=TAUGHT, first="sunflower.bmp")
    s.client.post("/api/classes", {"class": "flower"})
    open_page(browser, s)
    item = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=inbox-item]"),
                 "a frame in the inbox")[0]
    filed = item.get_attribute("data-item")
    Select(by_id(browser, "inbox-class", item)).select_by_value("flower")
    by_id(browser, "inbox-file", item).click()
    until(browser, lambda d: count_on_page(d, "flower") == 1, "the frame filed as a sample")
    until(browser, lambda d: filed not in d.execute_script(
        "return [...document.querySelectorAll('[data-testid=inbox-item]')]"
        ".map(i => i.dataset.item)"), "the frame to leave the inbox")
    assert s.client.status()["classes"]["flower"] == 1


def test_a_script_injection_class_name_stays_text(browser, studio):
    s = studio()
    open_page(browser, s)
    browser.execute_script("window.injected = false; window.alert = () => { window.injected = "
                           "true; };")
    by_id(browser, "new-class").send_keys(XSS)
    by_id(browser, "add-class").click()
    until(browser, lambda d: card(d, XSS) is not None, "the card")
    by_id(browser, "capture-button", card(browser, XSS)).click()
    until(browser, lambda d: count_on_page(d, XSS) == 1, "its sample")
    c = card(browser, XSS)
    assert c.find_element(By.CSS_SELECTOR, "h3").text == XSS
    until(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('[data-testid=thumbnail] img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"), "its thumbnail to load")
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert browser.execute_script("return window.injected") is False
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert s.client.status()["classes"] == {XSS: 1}


def test_the_page_logs_in_with_the_password(browser, studio):
    s = studio(config=web_config(password="s3cret"), teach=TAUGHT)
    browser.get(s.url)
    until(browser, lambda d: d.current_url.endswith("/login"), "the login page")
    by_id(browser, "password").send_keys("wrong")
    by_id(browser, "login").click()
    until(browser, lambda d: by_id(d, "login-error").text == "wrong password", "the refusal")
    field = by_id(browser, "password")
    field.clear()
    field.send_keys("s3cret")
    by_id(browser, "login").click()
    until(browser, lambda d: not d.current_url.endswith("/login"), "the studio")
    until(browser, lambda d: label(d) == "cat", "the label")


def _write_clip(path, frame, frames=30):
    """An MJPEG clip (JPEG images one after another), Chromium's --use-file-for-fake-video."""
    image = Image.fromarray(frame).resize((640, 480))
    with open(path, "wb") as f:
        for _ in range(frames):
            out = io.BytesIO()
            image.save(out, "JPEG", quality=92)
            f.write(out.getvalue())


def test_the_browser_camera_feeds_the_device(studio, sample, backbones, tmp_path):
    from edge_classifier.frames.images import load_image
    clip = tmp_path / "cat.mjpeg"
    _write_clip(clip, load_image(sample("cat.bmp")))
    config = web_config().replace(source=SourceConfig(kind="browser"))
    s = studio(config=config, source=False, backbone=backbones(), state=tmp_path / "state")
    for name, photo in TAUGHT:
        s.device.learner.capture(name, load_image(sample(photo)))
    s.device.bus.set_classes(s.device.store.classes)
    profile = tmp_path / "camera-profile"
    driver = chromium(profile, "--use-fake-device-for-media-stream",
                      "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={clip}")
    try:
        open_page(driver, s)
        until(driver, lambda d: s.device.web.camera.fed > 0, "frames from the browser")
        until(driver, lambda d: label(d) == "cat", "the browser's frames to be classified")
        assert s.device.counters.frames > 0 and s.device.web.camera.streaming
        assert "streaming" in by_id(driver, "camera-note").text
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_loads_while_the_camera_has_no_frame_yet(browser, studio, backbones, tmp_path):
    """Regression: the live view's <img> held the page's load event until the first frame; with
    a browser source that nobody feeds, the page never finished loading."""
    config = web_config().replace(source=SourceConfig(kind="browser"))
    s = studio(config=config, source=False, backbone=backbones(), state=tmp_path / "state")
    browser.set_page_load_timeout(TIMEOUT)
    try:
        open_page(browser, s)  # raised TimeoutException before the fix
        assert browser.execute_script("return document.readyState") == "complete"
        assert s.device.counters.frames == 0
    finally:
        browser.set_page_load_timeout(300)
