"""Smoothing: turn per-frame predictions into a steady state that does not flicker.

Every smoother takes one frame's top label, its confidence and (optionally) the whole score
vector, and returns the smoothed state: a class name, or ``unknown`` while nothing is certain::

    smoother = make_smoother(config.smoothing)         # consecutive, ema or none
    for label, confidence, scores in predictions:
        state = smoother.update(label, confidence, scores)
    smoother.reset()                                    # e.g. after the head was retrained

A frame "votes" for its label when its confidence is at least ``threshold`` and the label is
a class; otherwise it votes for ``unknown``. The three methods:

- :class:`NoSmoothing` -- the state is the current frame's vote.
- :class:`ConsecutiveSmoother` -- the state changes only after ``frames`` consecutive frames
  cast the same vote; ``unknown`` is a vote like any other, so it also takes ``frames``
  low-confidence frames in a row to fall back to ``unknown``. Starts as ``unknown``.
- :class:`EmaSmoother` -- an exponential moving average of the score vectors
  (``avg = (1 - alpha) * avg + alpha * scores``, the first frame taken as is); the state is the
  class with the highest average if that average is at least ``threshold``, else ``unknown``.

Pure Python, no I/O, no clock: the same frames always give the same states.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

from edge_classifier.core.names import UNKNOWN

__all__ = ["ConsecutiveSmoother", "EmaSmoother", "NoSmoothing", "Smoother", "make_smoother",
           "UNKNOWN"]


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, not {threshold!r}")
    return threshold


def _is_class(label: Optional[str]) -> bool:
    return isinstance(label, str) and bool(label) and label != UNKNOWN


def _confident(confidence: float, threshold: float) -> bool:
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and value >= threshold  # NaN never passes


class Smoother:
    """Base class: ``update(label, confidence, scores=None) -> state`` and ``reset()``."""

    def __init__(self, threshold: float = 0.8):
        self.threshold = _check_threshold(threshold)
        self._state = UNKNOWN

    @property
    def state(self) -> str:
        """The current smoothed state (a class name or ``unknown``)."""
        return self._state

    def vote(self, label: Optional[str], confidence: float) -> str:
        """What one frame says on its own: ``label`` if confident and a class, else unknown."""
        if _is_class(label) and _confident(confidence, self.threshold):
            return label  # type: ignore[return-value]
        return UNKNOWN

    def update(self, label: Optional[str], confidence: float,
               scores: Optional[Mapping[str, float]] = None) -> str:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the history; the state goes back to ``unknown``."""
        self._state = UNKNOWN

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self._state!r}>"


class NoSmoothing(Smoother):
    """The state is the current frame's vote (``scores`` is ignored)::

        s = NoSmoothing(threshold=0.8)
        s.update("cat", 0.9)   # "cat"
        s.update("cat", 0.5)   # "unknown"
    """

    def update(self, label, confidence, scores=None) -> str:
        self._state = self.vote(label, confidence)
        return self._state


class ConsecutiveSmoother(Smoother):
    """Change state only after ``frames`` consecutive frames vote the same way::

        s = ConsecutiveSmoother(frames=3, threshold=0.8)
        [s.update("cat", 0.9) for _ in range(3)]   # unknown, unknown, cat
        s.update("dog", 0.95)                       # still cat (1 of 3)
        s.update("dog", 0.30)                       # still cat (votes unknown: run restarts)

    A frame below ``threshold`` votes ``unknown`` and counts toward ``unknown`` exactly as a
    confident frame counts toward its label. A vote equal to the current state keeps the state
    and restarts any run toward another one. ``scores`` is ignored.
    """

    def __init__(self, frames: int = 3, threshold: float = 0.8):
        super().__init__(threshold)
        if isinstance(frames, bool) or int(frames) != frames or frames < 1:
            raise ValueError(f"frames must be a whole number of at least 1, not {frames!r}")
        self.frames = int(frames)
        self._candidate: Optional[str] = None
        self._run = 0

    def update(self, label, confidence, scores=None) -> str:
        vote = self.vote(label, confidence)
        if vote == self._state:
            self._candidate, self._run = None, 0
            return self._state
        if vote == self._candidate:
            self._run += 1
        else:
            self._candidate, self._run = vote, 1
        if self._run >= self.frames:
            self._state = vote
            self._candidate, self._run = None, 0
        return self._state

    def reset(self) -> None:
        super().reset()
        self._candidate, self._run = None, 0


class EmaSmoother(Smoother):
    """Exponential moving average of the score vectors (class name -> probability)::

        s = EmaSmoother(alpha=0.3, threshold=0.6)
        s.update("cat", 0.9, {"cat": 0.9, "dog": 0.1})   # "cat" (first frame taken as is)
        s.scores                                          # {"cat": 0.9, "dog": 0.1}

    ``avg[c] = (1 - alpha) * avg[c] + alpha * scores[c]`` for every class seen so far; a class
    missing from a frame's scores counts as 0 (so a deleted class fades out and is dropped once
    negligible). Without ``scores`` the frame is taken as ``{label: confidence}``. The state is
    the class with the highest average (ties: the first name in sorted order) when that average
    is at least ``threshold``, else ``unknown``.
    """

    _DROP_BELOW = 1e-6

    def __init__(self, alpha: float = 0.3, threshold: float = 0.8):
        super().__init__(threshold)
        alpha = float(alpha)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be above 0 and at most 1, not {alpha!r}")
        self.alpha = alpha
        self._avg: Dict[str, float] = {}
        self._started = False

    @property
    def scores(self) -> Dict[str, float]:
        """A copy of the averaged scores."""
        return dict(self._avg)

    @staticmethod
    def _frame_scores(label, confidence, scores) -> Dict[str, float]:
        if scores is None:
            scores = {label: confidence} if _is_class(label) else {}
        frame = {}
        for name, value in scores.items():
            if not _is_class(name):
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            frame[name] = value if math.isfinite(value) else 0.0
        return frame

    def update(self, label, confidence, scores=None) -> str:
        frame = self._frame_scores(label, confidence, scores)
        if not self._started:
            self._avg = dict(frame)
            self._started = True
        else:
            keep = 1.0 - self.alpha
            avg = {name: keep * value for name, value in self._avg.items()}
            for name, value in frame.items():
                avg[name] = avg.get(name, 0.0) + self.alpha * value
            self._avg = {name: value for name, value in avg.items()
                         if name in frame or value >= self._DROP_BELOW}
        best = min(self._avg.items(), key=lambda item: (-item[1], item[0]), default=None)
        if best is not None and best[1] >= self.threshold:
            self._state = best[0]
        else:
            self._state = UNKNOWN
        return self._state

    def reset(self) -> None:
        super().reset()
        self._avg = {}
        self._started = False


def make_smoother(config) -> Smoother:
    """The smoother a :class:`~edge_classifier.config.SmoothingConfig` asks for."""
    method = config.method
    if method == "consecutive":
        return ConsecutiveSmoother(frames=config.frames, threshold=config.threshold)
    if method == "ema":
        return EmaSmoother(alpha=config.alpha, threshold=config.threshold)
    if method == "none":
        return NoSmoothing(threshold=config.threshold)
    raise ValueError(f"smoothing.method must be consecutive, ema or none, not {method!r}")
