"""Classification heads fitted in NumPy on the device, on top of backbone embeddings.

Interface (every head; ``make_head(name)`` builds one, names in :data:`HEAD_NAMES`)::

    head = make_head("auto")                    # or "kernel", "least_squares", "softmax", ...
    head.fit(X, y, class_names, views=None)     # X: NxD raw embeddings, y: N ints in 0..C-1
    i = head.add(x, label, views=None)          # absorb one sample (x: D), returns its index
    head.remove(i)                              # forget sample i (later indices shift down)
    head.remove_sample(x, label)                # forget the stored sample equal to x
    head.refresh()                              # auto only: recalibrate after add/remove
    c = head.add_class("bottle")                # a new class, no samples yet
    P = head.predict_proba(X)                   # NxC calibrated probabilities
    labels, P = head.predict(X)                 # labels: N ints, -1 = unknown
    s = head.unknown_score(X)                   # N; unknown where s > head.unknown_threshold
    labels, P, s = head.predict_detailed(X)     # both at once, one pass over the samples
    arrays, meta = head.to_state()              # dict of arrays (.npz) + JSON-able dict
    head = load_head(arrays, meta)
    head.classes, head.dim, head.n_samples, head.labels, head.class_counts, head.temperature

Embeddings are raw backbone outputs (float or dequantised); heads normalise internally
(signed power 0.75, then L2; see :mod:`.preprocess`), so one head works on any backbone.
``views`` are extra views of the same training sample captured together (e.g. the flipped
frame, NxD or NxVxD); the stored point is their normalised mean. Queries are single views.

Defined behaviour
-----------------
* no samples: ``fit`` on zero rows and any query on an empty head raise :class:`EmptyHeadError`;
* a class with no samples (listed in ``class_names`` or made by ``add_class``) is kept, never
  predicted and gets probability 0;
* a single class: every frame is that class (probability 1) or unknown (-1);
* duplicate samples are allowed and count twice in the model (all solves are regularised);
  for calibration and the unknown threshold near-identical samples form one capture group;
* NaN/inf, wrong-length or wrongly shaped embeddings raise :class:`InvalidEmbeddingError`;
  labels out of range :class:`InvalidLabelError`; bad hyper-parameters
  :class:`InvalidParameterError`;
* removing a sample that is not there raises :class:`SampleNotFoundError` (a KeyError);
* an unknown head name raises :class:`UnknownHeadError`; a corrupt state :class:`StateError`.

All errors derive from :class:`HeadError` (a ValueError).

Calibration and unknowns
------------------------
Probabilities are ``softmax(scores / T)`` with T fitted on the held-out scores of the stored
samples (cross-validated for the softmax head), see :mod:`.calibration`. The unknown score
adds the robustly standardised distance to the nearest stored sample and the doubt
``1 - max probability``; its threshold is the 95th percentile of the same score of the stored
samples held out (:mod:`.openset`). Held out means with the sample's *capture group*: the
stored samples within cosine distance 0.02 of it, transitively (exact copies, or a held
button's burst of frames of a still object, see :mod:`.neighbours`); a group weighs as one
sample. Without that, a set in which every photo appears twice called every new frame unknown.

``predict_detailed(X) -> (labels, P, score)`` gives the unknown score with the prediction for
the cost of ``predict``; ``head.unknown_threshold`` is the threshold (+inf: never unknown, e.g.
with a single capture group). ``labels`` is -1 (multi-label: an all-False row) exactly where
``score > head.unknown_threshold``. Every head has both, ``auto`` and ``multilabel`` included.

Heads
-----
``kernel`` (:class:`KernelHead`): RBF kernel ridge onto one-hot targets; exact O(N^2)
add/remove. ``least_squares`` (:class:`LeastSquaresHead`): linear ridge; exact rank-one
add/remove. ``softmax`` (:class:`SoftmaxHead`): multinomial logistic regression, L-BFGS.
``imprinting`` / ``knn``: Coral's baselines. ``auto`` (:class:`AutoHead`): RBF kernel ridge on
a budget of landmarks (default 1,024): exactly the ``kernel`` head while every sample is a
landmark, O(m^2) add/remove and O(m*D) queries at any N, saved with its solved system (loads
without a fit); its calibration is a job that may run in another thread (``calibration_job``). ``multilabel`` (:class:`MultiLabelHead`): one-vs-rest sigmoids
with per-class thresholds. Evaluation helpers live in :mod:`.metrics`; seeded synthetic
embeddings for tests and demos in :mod:`.synthetic`.

Measured accuracy, calibration and unknown detection of every head are in the README
("Learning on the device"), produced by ``edge-classifier eval`` and ``tools/eval_openset.py``.
"""

from __future__ import annotations

from .auto import AutoHead
from .base import Head
from edge_classifier.errors import (EmptyHeadError, HeadError, InvalidEmbeddingError, InvalidLabelError,
                     InvalidParameterError, SampleNotFoundError, StateError, UnknownHeadError)
from .kernel import KernelHead
from .least_squares import LeastSquaresHead
from .metrics import (ClassReport, accuracy, auroc, classification_report, confusion_matrix, draw_shots,
                      expected_calibration_error, stratified_split)
from .multilabel import MultiLabelHead
from .prototypes import ImprintingHead, KnnHead
from .registry import HEAD_NAMES, AnyHead, load_head, make_head
from .softmax import SoftmaxHead

__all__ = [
    "AnyHead", "AutoHead", "ClassReport", "EmptyHeadError", "HEAD_NAMES", "Head", "HeadError",
    "ImprintingHead", "InvalidEmbeddingError", "InvalidLabelError", "InvalidParameterError",
    "KernelHead", "KnnHead", "LeastSquaresHead", "MultiLabelHead", "SampleNotFoundError",
    "SoftmaxHead", "StateError", "UnknownHeadError", "accuracy", "auroc",
    "classification_report", "confusion_matrix", "draw_shots", "expected_calibration_error",
    "load_head", "make_head", "stratified_split",
]
