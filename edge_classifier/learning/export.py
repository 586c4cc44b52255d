"""The trained classifier as one TFLite file: the backbone, the head and ``labels.txt``::

    exported = export_model(learner.backbone, learner.head, "trash.tflite")
    exported.path, exported.labels_path, exported.size   # labels.txt beside the model
    exported.unknown_threshold                           # unknown where output 1 is above it

The file's input is the backbone's: one frame prepared as :meth:`Backbone.prepare` does it
(centre crop, or squash, to HxW), 1xHxWx3 uint8 for the MobileNet backbones. Its outputs, in
this order, as code written for a Teachable Machine or Coral classifier expects:

0. ``probabilities`` (1xC float32): the head's calibrated class probabilities; class i is
   line i of ``labels.txt`` (``0 apple``, Teachable Machine's format);
1. ``unknown_score`` (1x1 float32): :meth:`head.unknown_score`; the frame is unknown where it
   exceeds the threshold kept in the file's ``edge_classifier`` metadata (JSON, see
   :func:`read_export_metadata`).

The head as TFLite builtin ops after the embedding e (1xD), every weight a constant buffer::

    z = L2_NORMALIZATION(POW(e, power))  # signed power (e * |e|**(power-1)) if e can be < 0
    s = FULLY_CONNECTED(z, Z)            # cosine similarity to the N stored points (1xN)
    kernel (rbf):   k = EXP(MINIMUM(2g*s - g*|Z_i|**2 - g*|z|**2, 0));  f = FC(k, alpha.T/T)
    kernel (cosine):                                                   f = FC(s, alpha.T/T)
    least_squares:                                                     f = FC(z, W.T/T, b/T)
    probabilities = SOFTMAX(f)           # a class without samples: bias -1e30, probability 0
    unknown_score = c + a*REDUCE_MAX(s) + b*REDUCE_MAX(probabilities)

The unknown score is affine in the best similarity and the best probability (today
``a = -1/dist_scale``, ``b = -1/doubt_scale``, ``c = (1-dist_loc)/dist_scale +
(1-doubt_loc)/doubt_scale``, see :mod:`.heads.openset`); a, b and c are read off the head's
own scoring function, so a refit (or a new way of fitting the threshold) changes constants
only. Before anything is written the export is checked against the package's own numbers (on
probes at the stored points and on two whole frames); a mismatch is an :class:`ExportError`.

Precision: the ops run in float32, the package in float64 (up to 512 samples) or float32
products; on TrashNet (1,769 samples) probabilities agree within 5e-4. ``float16=True`` keeps
the stored points, the bulk of a kernel head's bytes, as float16 in the file (3e-3).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from edge_classifier.backbone.export import GraphEditor
from edge_classifier.backbone.runtime import make_interpreter
from edge_classifier.core import atomic
from edge_classifier.errors import ExportError, UnsupportedHeadError

EXPORTABLE_HEADS = ("auto", "kernel", "least_squares")
METADATA_KEY = "edge_classifier"
EXPORT_FORMAT = 1
OUTPUTS = ("probabilities", "unknown_score")
MASKED = -1e30  # bias of a class without samples
TINY = 1e-30  # |e| below this counts as zero in the signed power
# The self-check's limits (float32 sums over ~2,000 kernel terms differ from the package's
# float64 by ~5e-4 on TrashNet; the project's goal is 0.01).
PROBABILITY_TOLERANCE = 5e-3
UNKNOWN_TOLERANCE = 1e-2  # times max(1, |score|)


@dataclass(frozen=True)
class HeadConstants:
    """What the exported head computes with (see the module docstring)."""

    head: str  # "kernel" or "least_squares" (what auto delegates to)
    kernel: str  # "rbf", "cosine" or "linear"
    power: float
    points: np.ndarray  # N x D stored points
    sq_norms: np.ndarray  # N
    gamma: float
    weights: np.ndarray  # C x N (kernel) or C x D (linear), already divided by T
    bias: np.ndarray  # C, divided by T; MASKED for classes without samples
    unknown: Tuple[float, float, float]  # c, a, b
    threshold: float  # +inf: never unknown
    temperature: float
    classes: List[str]


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    labels_path: Path
    size: int  # bytes of the .tflite file
    classes: List[str]
    unknown_threshold: float
    head: str
    max_probability_error: float  # found by the self-check
    max_unknown_error: float


def _inner(head):
    """The head that computes: auto's chosen head, or ``head`` itself."""
    name = getattr(head, "name", type(head).__name__)
    if name not in EXPORTABLE_HEADS:
        raise UnsupportedHeadError(
            f"the {name} head cannot be exported as TFLite; heads that can: "
            f"{', '.join(EXPORTABLE_HEADS)} (retrain the state with --head auto)")
    inner = head.inner if name == "auto" else head
    if inner.name not in EXPORTABLE_HEADS:
        raise UnsupportedHeadError(f"the auto head chose {inner.name}, which cannot be exported")
    if inner.n_samples == 0:
        raise ExportError("the head holds no samples: teach the state first")
    return inner


def _unknown_formula(inner, n_classes: int) -> Tuple[float, float, float]:
    """(c, a, b) with ``unknown = c + a*max_similarity + b*max_probability``, probed from the
    head's own scoring; an error if that scoring is not affine in those two numbers."""
    def score(s: float, p: float) -> float:
        P = np.zeros((1, n_classes))
        P[0, 0] = p
        return float(inner._unknown(np.array([[s]]), P)[0])
    try:
        c = score(0.0, 0.0)
        a, b = score(1.0, 0.0) - c, score(0.0, 1.0) - c
        for s, p in ((0.37, 0.81), (-0.5, 0.2), (0.99, 0.33), (0.6, 1.0)):
            got = score(s, p)
            if not abs(got - (c + a * s + b * p)) <= 1e-9 * (1.0 + abs(got)):
                raise ValueError(f"score({s}, {p}) = {got} is not affine")
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise ExportError(f"cannot express the head's unknown score in TFLite ({exc})") from None
    if not all(np.isfinite([c, a, b])):
        raise ExportError(f"the head's unknown score has no finite form (c={c}, a={a}, b={b})")
    return c, a, b


def head_constants(head) -> HeadConstants:
    """The constants of an ``auto``, ``kernel`` or ``least_squares`` head; any other head is
    an :class:`UnsupportedHeadError` naming those three."""
    inner = _inner(head)
    classes = list(inner.classes)
    T = float(inner.temperature)
    counts = np.asarray(inner.class_counts)
    bias = np.where(counts == 0, MASKED, 0.0)
    points = np.asarray(inner._Z, np.float32)
    sq = np.einsum("ij,ij->i", points, points, dtype=np.float64)
    if inner.name == "kernel":
        kernel, gamma = inner.kernel, float(inner.gamma)
        weights = np.asarray(inner._alpha, np.float64).T / T
    else:
        kernel, gamma = "linear", 0.0
        W = np.asarray(inner._W, np.float64)
        weights, bias = W[:-1].T / T, np.where(counts == 0, MASKED, W[-1] / T)
    return HeadConstants(inner.name, kernel, float(inner.power), points, sq, gamma, weights,
                         bias, _unknown_formula(inner, len(classes)),
                         float(inner.unknown_threshold), T, classes)


def append_head(editor: GraphEditor, e: int, k: HeadConstants, nonnegative: bool,
                half_points: bool = False):
    """Append the head's ops after float32 embedding tensor ``e`` (1xD); returns the
    (probabilities, unknown score) tensors. ``half_points`` stores the NxD points as float16."""
    ed = editor
    if k.power != 1.0:
        power = ed.constant("head/power", np.array([k.power], np.float32))
        if nonnegative:
            e = ed.binary("POW", e, power, "head/powered")
        else:  # sign(e)|e|**p == e * |e|**(p-1), without SIGN (added to TFLite only in 2.11)
            tiny = ed.constant("head/tiny", np.array([TINY], np.float32))
            m = ed.binary("MAXIMUM", ed.op("ABS", [e], "head/abs", ed.shape(e)), tiny, "head/mag")
            p1 = ed.constant("head/power_minus_one", np.array([k.power - 1.0], np.float32))
            e = ed.binary("MUL", e, ed.binary("POW", m, p1, "head/scale"), "head/powered")
    z = ed.op("L2_NORMALIZATION", [e], "head/normalised", ed.shape(e))
    points = ed.constant("head/points", k.points, half=half_points)
    s = ed.fully_connected(z, points, None, "head/similarity")
    if k.kernel == "rbf":
        g = k.gamma
        two_g = ed.constant("head/two_gamma", np.array([2.0 * g], np.float32))
        offset = ed.constant("head/minus_gamma_sq_norms", -g * k.sq_norms)
        x = ed.binary("ADD", ed.binary("MUL", s, two_g, "head/scaled"), offset, "head/exponent0")
        zz = ed.reduce("SUM", ed.binary("MUL", z, z, "head/z_squared"), "head/z_sq_norm")
        minus_g = ed.constant("head/minus_gamma", np.array([-g], np.float32))
        x = ed.binary("ADD", x, ed.binary("MUL", zz, minus_g, "head/query_term"), "head/exponent")
        zero = ed.constant("head/zero", np.array([0.0], np.float32))
        features = ed.op("EXP", [ed.binary("MINIMUM", x, zero, "head/clipped")], "head/kernel",
                         ed.shape(s))
    elif k.kernel == "cosine":
        features = s
    else:
        features = z
    logits = ed.fully_connected(features, ed.constant("head/weights", k.weights),
                                ed.constant("head/bias", k.bias), "head/logits")
    probs = ed.op("SOFTMAX", [logits], "probabilities", ed.shape(logits), beta=1.0)
    c, a, b = k.unknown
    best_s = ed.binary("MUL", ed.reduce("REDUCE_MAX", s, "head/best_similarity"),
                       ed.constant("head/unknown_a", np.array([a], np.float32)), "head/u_dist")
    best_p = ed.binary("MUL", ed.reduce("REDUCE_MAX", probs, "head/best_probability"),
                       ed.constant("head/unknown_b", np.array([b], np.float32)), "head/u_doubt")
    unknown = ed.binary("ADD", ed.binary("ADD", best_s, best_p, "head/u_sum"),
                        ed.constant("head/unknown_c", np.array([c], np.float32)), "unknown_score")
    return probs, unknown


@dataclass(frozen=True)
class BuiltModel:
    """An exported model's bytes and what it was built from (nothing written yet)."""

    content: bytes
    constants: HeadConstants
    nonnegative: bool  # the embedding cannot be negative: the power is one POW op
    float16: bool  # the stored points are kept as float16


def _metadata(k: HeadConstants, backbone, float16: bool) -> bytes:
    threshold = k.threshold if np.isfinite(k.threshold) else None
    c, a, b = k.unknown
    meta = {"format": EXPORT_FORMAT, "outputs": list(OUTPUTS), "classes": k.classes,
            "head": k.head, "kernel": k.kernel, "temperature": k.temperature,
            "unknown_threshold": threshold,
            "unknown_score": {"formula": "c + a * max_similarity + b * max_probability",
                              "c": c, "a": a, "b": b},
            "points": "float16" if float16 else "float32",
            "backbone": backbone.identity, "input_size": list(backbone.input_size),
            "resize": backbone.resize}
    return json.dumps(meta).encode("utf-8")


def _nonnegative(editor: GraphEditor, index: int) -> bool:
    lo = editor.value_range(index)
    return lo is not None and lo[0] >= 0.0


def build_model(backbone, head, float16: bool = False) -> BuiltModel:
    """The backbone's model with the head's ops after its embedding; nothing is written."""
    k = head_constants(head)
    if k.points.shape[1] != backbone.embedding_dim:
        raise ExportError(f"the head takes {k.points.shape[1]}-d embeddings, {backbone.name} "
                          f"makes {backbone.embedding_dim}-d ones")
    content = Path(backbone.path).read_bytes()
    if hashlib.sha256(content).hexdigest() != backbone.sha256:
        raise ExportError(f"{backbone.path}: changed since it was loaded; export again")
    editor = GraphEditor(content, str(backbone.path))
    if backbone.penultimate is not None:
        embedding = backbone.penultimate.tensor_index
    else:
        embedding = editor.graph.outputs[0]
    nonneg = _nonnegative(editor, embedding)
    probs, unknown = append_head(editor, editor.float_vector(embedding), k, nonneg, float16)
    out = editor.finish({OUTPUTS[0]: probs, OUTPUTS[1]: unknown},
                        {METADATA_KEY: _metadata(k, backbone, float16)},
                        f"{backbone.name} + edge-classifier {k.head} head")
    return BuiltModel(out, k, nonneg, float16)


def head_only_model(k: HeadConstants, nonnegative: bool = False, float16: bool = False) -> bytes:
    """The same head ops on a float32 embedding input (1xD): for checks and tests."""
    editor = GraphEditor(None, "head")
    e = editor.input("embedding", [1, k.points.shape[1]])
    probs, unknown = append_head(editor, e, k, nonnegative, float16)
    return editor.finish({OUTPUTS[0]: probs, OUTPUTS[1]: unknown}, {})


def run_exported(interpreter, batch) -> Tuple[np.ndarray, np.ndarray]:
    """(probabilities NxC, unknown scores N) of an exported model's interpreter on inputs."""
    inp = interpreter.get_input_details()[0]
    out = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    P, U = [], []
    for x in batch:
        interpreter.set_tensor(inp["index"], np.asarray(x, inp["dtype"])[None])
        interpreter.invoke()
        P.append(interpreter.get_tensor(out[OUTPUTS[0]])[0].copy())
        U.append(float(interpreter.get_tensor(out[OUTPUTS[1]]).reshape(-1)[0]))
    return np.array(P, np.float64), np.array(U)


def _probes(k: HeadConstants, rng: np.random.Generator) -> np.ndarray:
    """Raw embeddings whose normalised points are stored points, mixes of two of them, and 0."""
    n = k.points.shape[0]
    pick = rng.choice(n, size=min(n, 24), replace=False)
    Z = k.points[pick].astype(np.float64)
    mixes = Z + Z[rng.permutation(len(Z))]
    zs = np.vstack([Z, mixes, np.zeros((1, Z.shape[1]))])
    return (np.sign(zs) * np.abs(zs) ** (1.0 / k.power)).astype(np.float32)


def _compare(P, U, head, X) -> Tuple[float, float]:
    want_p, want_u = head.predict_proba(X), head.unknown_score(X)
    dp = float(np.max(np.abs(P - want_p)))
    du = float(np.max(np.abs(U - want_u) / np.maximum(1.0, np.abs(want_u))))
    if not (dp <= PROBABILITY_TOLERANCE and du <= UNKNOWN_TOLERANCE):
        raise ExportError(f"the exported model disagrees with the head (probabilities by {dp:.2g}, "
                          f"unknown score by {du:.2g}); nothing was written")
    return dp, du


def check_export(built: BuiltModel, backbone, head) -> Tuple[float, float]:
    """Largest (probability, relative unknown-score) differences between the exported ops and
    the package, on probes through the head alone and on two frames through the whole file;
    :class:`ExportError` if over the tolerances."""
    rng = np.random.default_rng(0)
    X = _probes(built.constants, rng)
    small = make_interpreter(head_only_model(built.constants, built.nonnegative, built.float16),
                             1, "the exported head")
    d1 = _compare(*run_exported(small, X), head, X)
    h, w = backbone.input_size
    frames = [np.full((h, w, 3), 128, np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)]
    whole = make_interpreter(built.content, None, "the exported model")
    emb = np.stack([backbone.run_prepared(f).embedding for f in frames])
    P, U = run_exported(whole, [backbone._to_input(f)[0] for f in frames])
    d2 = _compare(P, U, head, emb)
    return max(d1[0], d2[0]), max(d1[1], d2[1])


def labels_text(classes) -> str:
    """``labels.txt`` in Teachable Machine's format: ``0 apple``, one class a line."""
    return "".join(f"{i} {name}\n" for i, name in enumerate(classes))


def export_model(backbone, head, out, labels_path=None, *, float16: bool = False,
                 check: bool = True) -> ExportedModel:
    """Write the backbone plus ``head`` to ``out`` (.tflite) and ``labels.txt`` beside it
    (or to ``labels_path``), both atomically, after checking the export (see module docs).

    ``float16`` keeps the stored points (the bulk of a kernel head) as float16: about half
    the head's bytes, probabilities a few thousandths from the package's instead of ~1e-4.
    """
    out = Path(out)
    labels = Path(labels_path) if labels_path else out.with_name("labels.txt")
    built = build_model(backbone, head, float16)
    dp = du = float("nan")
    if check:
        dp, du = check_export(built, backbone, head)
    k = built.constants
    atomic.write_bytes(out, built.content)
    atomic.write_text(labels, labels_text(k.classes))
    return ExportedModel(out, labels, len(built.content), list(k.classes), k.threshold, k.head,
                         dp, du)


def read_export_metadata(content: bytes) -> Optional[dict]:
    """The ``edge_classifier`` metadata (JSON) of an exported model; None if it has none."""
    editor = GraphEditor(content, "model")
    for m in editor.model.metadata or []:
        name = m.name.decode() if isinstance(m.name, bytes) else m.name
        if name == METADATA_KEY:
            return json.loads(bytes(editor.model.buffers[m.buffer].data).decode("utf-8"))
    return None
