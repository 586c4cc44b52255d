"""Smoothers: the state each method reports for a known sequence of frames."""

from __future__ import annotations

import pytest

from edge_classifier.config import SmoothingConfig
from edge_classifier.core.names import UNKNOWN
from edge_classifier.learning.smoothing import (ConsecutiveSmoother, EmaSmoother, NoSmoothing,
                                       make_smoother)


def feed(smoother, frames):
    return [smoother.update(*frame) for frame in frames]


# --- none ---------------------------------------------------------------------------------------
def test_no_smoothing_reports_each_confident_frame():
    s = NoSmoothing(threshold=0.8)
    assert feed(s, [("cat", 0.9), ("dog", 0.85), ("cat", 0.95)]) == ["cat", "dog", "cat"]


def test_no_smoothing_is_unknown_below_threshold():
    s = NoSmoothing(threshold=0.8)
    assert s.update("cat", 0.79) == UNKNOWN


def test_unknown_label_and_nan_confidence_are_unknown():
    s = NoSmoothing(threshold=0.5)
    assert s.update(UNKNOWN, 0.99) == UNKNOWN
    assert s.update("cat", float("nan")) == UNKNOWN
    assert s.update(None, 1.0) == UNKNOWN


# --- consecutive --------------------------------------------------------------------------------
def test_consecutive_starts_unknown_and_switches_after_n_frames():
    s = ConsecutiveSmoother(frames=3, threshold=0.8)
    assert feed(s, [("cat", 0.9)] * 3) == [UNKNOWN, UNKNOWN, "cat"]


def test_consecutive_interrupted_run_does_not_switch():
    s = ConsecutiveSmoother(frames=3, threshold=0.8)
    feed(s, [("cat", 0.9)] * 3)
    states = feed(s, [("dog", 0.9), ("dog", 0.9), ("cat", 0.9), ("dog", 0.9), ("dog", 0.9)])
    assert states == ["cat"] * 5


def test_consecutive_low_confidence_frames_count_toward_unknown():
    s = ConsecutiveSmoother(frames=3, threshold=0.8)
    feed(s, [("cat", 0.9)] * 3)
    assert feed(s, [("cat", 0.5), ("dog", 0.3), ("cat", 0.1)]) == ["cat", "cat", UNKNOWN]


def test_consecutive_low_confidence_frame_breaks_a_run():
    s = ConsecutiveSmoother(frames=2, threshold=0.8)
    assert feed(s, [("dog", 0.9), ("dog", 0.2), ("dog", 0.9)]) == [UNKNOWN] * 3


def test_consecutive_with_one_frame_follows_every_vote():
    s = ConsecutiveSmoother(frames=1, threshold=0.5)
    assert feed(s, [("a", 0.9), ("b", 0.9), ("b", 0.1)]) == ["a", "b", UNKNOWN]


def test_consecutive_reset_forgets_state_and_run():
    s = ConsecutiveSmoother(frames=2, threshold=0.5)
    feed(s, [("a", 0.9)] * 2 + [("b", 0.9)])
    s.reset()
    assert s.state == UNKNOWN
    assert s.update("b", 0.9) == UNKNOWN  # the earlier "b" frame no longer counts


def test_consecutive_rejects_bad_parameters():
    with pytest.raises(ValueError):
        ConsecutiveSmoother(frames=0)
    with pytest.raises(ValueError):
        ConsecutiveSmoother(threshold=1.5)


# --- ema ----------------------------------------------------------------------------------------
def test_ema_first_frame_is_taken_as_is():
    s = EmaSmoother(alpha=0.3, threshold=0.6)
    assert s.update("cat", 0.9, {"cat": 0.9, "dog": 0.1}) == "cat"
    assert s.scores == pytest.approx({"cat": 0.9, "dog": 0.1})


def test_ema_averages_scores_with_alpha():
    s = EmaSmoother(alpha=0.5, threshold=0.6)
    s.update("cat", 0.9, {"cat": 0.9, "dog": 0.1})
    s.update("dog", 0.7, {"cat": 0.3, "dog": 0.7})
    assert s.scores == pytest.approx({"cat": 0.6, "dog": 0.4})
    assert s.state == "cat"


def test_ema_single_outlier_frame_does_not_flip_state():
    s = EmaSmoother(alpha=0.3, threshold=0.5)
    feed(s, [("cat", 0.95, {"cat": 0.95, "dog": 0.05})] * 5)
    assert s.update("dog", 0.99, {"cat": 0.01, "dog": 0.99}) == "cat"


def test_ema_state_is_unknown_when_average_below_threshold():
    s = EmaSmoother(alpha=0.5, threshold=0.8)
    assert s.update("cat", 0.6, {"cat": 0.6, "dog": 0.4}) == UNKNOWN


def test_ema_missing_class_fades_out():
    s = EmaSmoother(alpha=0.5, threshold=0.5)
    s.update("gone", 1.0, {"gone": 1.0})
    for _ in range(40):
        s.update("cat", 1.0, {"cat": 1.0})
    assert "gone" not in s.scores
    assert s.state == "cat"


def test_ema_without_scores_uses_label_and_confidence():
    s = EmaSmoother(alpha=0.5, threshold=0.5)
    assert s.update("cat", 0.9) == "cat"
    assert s.scores == pytest.approx({"cat": 0.9})


def test_ema_reset_forgets_average():
    s = EmaSmoother(alpha=0.1, threshold=0.5)
    s.update("cat", 1.0, {"cat": 1.0})
    s.reset()
    assert s.state == UNKNOWN
    assert s.update("dog", 0.9, {"dog": 0.9}) == "dog"


def test_ema_rejects_bad_alpha():
    with pytest.raises(ValueError):
        EmaSmoother(alpha=0.0)


# --- factory ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, kind", [("consecutive", ConsecutiveSmoother),
                                          ("ema", EmaSmoother), ("none", NoSmoothing)])
def test_make_smoother_follows_config(method, kind):
    s = make_smoother(SmoothingConfig(method=method, frames=4, threshold=0.7, alpha=0.2))
    assert isinstance(s, kind)
    assert s.threshold == 0.7


def test_make_smoother_passes_frames_and_alpha():
    assert make_smoother(SmoothingConfig(method="consecutive", frames=4)).frames == 4
    assert make_smoother(SmoothingConfig(method="ema", alpha=0.2)).alpha == 0.2
