"""Where edge-classifier keeps its files.

The data directory holds downloaded models (``models/``) and, unless ``--state`` says otherwise,
the learned state (``state/``). It is, in order of precedence:

1. ``$EDGE_CLASSIFIER_HOME``;
2. ``$STATE_DIRECTORY`` — set by systemd for a service with ``StateDirectory=``;
3. ``$XDG_DATA_HOME/edge-classifier``, by default ``~/.local/share/edge-classifier``.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "EDGE_CLASSIFIER_HOME"
MIRROR_ENV = "EDGE_CLASSIFIER_MODEL_MIRROR"


def data_home() -> Path:
    """The data directory (not created here)."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    systemd_state = os.environ.get("STATE_DIRECTORY")
    if systemd_state:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(systemd_state.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "edge-classifier"


def models_dir() -> Path:
    """Folder the model fetcher installs models and sample files into."""
    return data_home() / "models"


def default_state_dir() -> Path:
    """Folder for samples and heads when ``--state`` is not given."""
    return data_home() / "state"
