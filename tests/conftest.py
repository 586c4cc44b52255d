"""Shared fixtures: the real models, fetched once through the project's own fetch command.

The suite never touches the user's own data directory (``~/.local/share/edge-classifier``):
unless ``$EDGE_CLASSIFIER_HOME`` is set, it is set here, before anything reads it, to the
checkout's ``.data/`` (gitignored; CI uses it too). Models come from
``$EDGE_CLASSIFIER_MODEL_MIRROR``, else from ``../shared/mirror`` beside the checkout when it
exists (CI), else from the upstream URLs in the manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if not os.environ.get("EDGE_CLASSIFIER_HOME"):
    os.environ["EDGE_CLASSIFIER_HOME"] = str(REPO / ".data")

import pytest  # noqa: E402  (after the data directory is settled)
from hypothesis import settings  # noqa: E402

# Property tests draw the same cases on every run, so the suite cannot flake on a case one run
# happens to find: ``EDGE_CLASSIFIER_HYPOTHESIS=search`` explores new cases (add what it finds
# as an ``@example``).
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("search", derandomize=False, database=None)
settings.load_profile(os.environ.get("EDGE_CLASSIFIER_HYPOTHESIS", "deterministic"))

from edge_classifier.core import paths  # noqa: E402
from edge_classifier.backbone.fetch import fetch  # noqa: E402
from edge_classifier.backbone.manifest import load_manifest  # noqa: E402

assert paths.HOME_ENV == "EDGE_CLASSIFIER_HOME"


def mirror_dir():
    env = os.environ.get(paths.MIRROR_ENV)
    if env:
        return Path(env)
    shared = REPO.parent / "shared" / "mirror"
    return shared if shared.is_dir() else None


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The data directory's model folder with every manifest file installed and verified."""
    folder = paths.models_dir()
    fetch(None, mirror=mirror_dir(), dest=folder)
    return folder


@pytest.fixture(scope="session")
def manifest():
    return load_manifest()


@pytest.fixture(scope="session")
def sample(models_dir):
    """Path of a fetched sample photo by name: ``sample("cat.bmp")``."""
    return lambda name: models_dir / name


@pytest.fixture
def frames(sample):
    """Four random crops of each of three sample photos: {"cat": [4 arrays], "bird", "food"}."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    out = {}
    for name, photo in (("cat", "cat.bmp"), ("bird", "parrot.jpg"), ("food", "hot_dog.jpg")):
        image = Image.open(sample(photo)).convert("RGB")
        w, h = image.size
        crops = []
        for _ in range(4):
            s = rng.uniform(0.6, 0.95)
            cw, ch = int(w * s), int(h * s)
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crops.append(np.asarray(image.crop((x, y, x + cw, y + ch))))
        out[name] = crops
    return out


@pytest.fixture(scope="session")
def backbones(models_dir):
    """Backbones loaded once per session, by (model name, resize mode)."""
    from edge_classifier.backbone.model import Backbone
    cache = {}

    def get(name=None, resize="crop"):
        key = (name, resize)
        if key not in cache:
            cache[key] = Backbone.from_name(name, models_dir=models_dir, resize=resize)
        return cache[key]
    return get


@pytest.fixture
def device_factory(tmp_path, backbones, sample):
    """``make(config, photos, state, **parts)``: devices on the session's backbone (see
    devicekit.device_factory)."""
    from devicekit import device_factory as body
    yield from body(tmp_path, backbones, sample)
