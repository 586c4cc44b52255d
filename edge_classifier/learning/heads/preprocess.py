"""Input checks and the embedding normalisation shared by every head (pure functions).

Normalisation (``normalise``): signed power ``sign(x)*|x|**power`` per coordinate, then division
by the L2 norm. The power transform (0.75 by default for the learned heads) evens out the heavy-
tailed ReLU activations of MobileNet embeddings; unit length makes the heads independent of the
backbone's output scale (uint8-dequantised or float). An all-zero embedding (e.g. a covered lens)
stays the zero vector: it is equally far from every stored sample and so scores as unknown.

Augmented views (``merge_views``): a training sample may carry extra views of the same object
captured at the same time (e.g. the horizontally flipped frame). Its stored point is the mean of
the normalised views, normalised again. Queries are always one view (no test-time augmentation).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from edge_classifier.errors import InvalidEmbeddingError, InvalidLabelError

__all__ = ["as_embeddings", "as_labels", "check_class_names", "merge_views", "normalise"]


def check_class_names(class_names: Sequence[str]) -> List[str]:
    """Return ``class_names`` as a list of distinct non-empty strings or raise InvalidLabelError."""
    if isinstance(class_names, str) or not isinstance(class_names, (list, tuple, np.ndarray)):
        raise InvalidLabelError("class_names must be a list of strings")
    names = [str(c) if isinstance(c, np.str_) else c for c in class_names]
    for c in names:
        if not isinstance(c, str) or not c.strip():
            raise InvalidLabelError(f"class names must be non-empty strings, got {c!r}")
    if len(set(names)) != len(names):
        raise InvalidLabelError(f"class names must be distinct, got {names}")
    if not names:
        raise InvalidLabelError("at least one class name is needed")
    return list(names)


def as_embeddings(X, dim: Optional[int] = None, allow_1d: bool = False, name: str = "X") -> np.ndarray:
    """Return ``X`` as a float32 NxD array, checking shape, length ``dim`` and finiteness
    (values beyond the float32 range count as infinite).

    With ``allow_1d`` a single embedding of length D is accepted as a 1xD batch.
    """
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise InvalidEmbeddingError(f"{name} is not an array of embeddings: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InvalidEmbeddingError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1 and allow_1d:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidEmbeddingError(f"{name} must be a 2-D NxD array, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise InvalidEmbeddingError(f"{name} has zero-length embeddings")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidEmbeddingError(f"{name} has embeddings of length {arr.shape[1]}, the head expects {dim}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = arr.astype(np.float32, copy=False)  # the precision the heads store
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.all(np.isfinite(arr), axis=1))
        raise InvalidEmbeddingError(f"{name} holds NaN or infinity (rows {bad[:5].tolist()})")
    return arr


def as_labels(y, n: int, n_classes: int) -> np.ndarray:
    """Return ``y`` as int64 labels (N) in ``0..n_classes-1`` or raise InvalidLabelError."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidLabelError(f"expected {n} labels, got shape {arr.shape}")
    numeric = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if n and (arr.dtype == bool or not numeric):
        raise InvalidLabelError(f"labels must be integers, got dtype {arr.dtype}")
    if n and np.issubdtype(arr.dtype, np.floating) and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
        raise InvalidLabelError("labels must be integers")
    out = arr.astype(np.int64)
    if n and (out.min() < 0 or out.max() >= n_classes):
        raise InvalidLabelError(f"labels must lie in 0..{n_classes - 1}, got {out.min()}..{out.max()}")
    return out


def _signed_power(X: np.ndarray, power: float) -> np.ndarray:
    if power == 1.0:
        return X
    nonneg = X.size == 0 or float(X.min()) >= 0.0
    B = X if nonneg else np.abs(X)
    if power == 0.5:
        P = np.sqrt(B)
    elif power == 0.75:  # sqrt is far cheaper than pow on small CPUs
        P = np.sqrt(B)
        P *= np.sqrt(P)
    else:
        P = B ** B.dtype.type(power)
    return P if nonneg else P * np.sign(X)


def normalise_power(values: np.ndarray, power: float) -> np.ndarray:
    """The signed power :func:`normalise` takes of each value (float32, a new array)."""
    X = np.asarray(values, dtype=np.float32)
    P = _signed_power(X, float(power))
    return X.copy() if P is X else P


def normalise(X: np.ndarray, power: float) -> np.ndarray:
    """Signed power then L2 normalisation of the rows of X (NxD) -> NxD float32.

    Computed in float32 (the precision the heads store); zero rows stay zero.
    """
    X = np.asarray(X, dtype=np.float32)
    P = _signed_power(X, float(power))
    if P is X:
        P = X.copy()
    norm = np.sqrt(np.einsum("ij,ij->i", P, P, dtype=np.float64)).astype(np.float32)
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    P *= inv[:, None]
    return P


def merge_views(X: np.ndarray, views, power: float, dim: Optional[int] = None) -> np.ndarray:
    """Stored points (NxD float32) for N samples X (NxD) with optional extra views.

    ``views`` is None, an NxD array (one extra view per sample) or NxVxD (V extra views). Each
    point is the normalised mean of the normalised views (the sample itself included).
    """
    Z = normalise(X, power)
    if views is None:
        return Z
    V = np.asarray(views)
    if V.ndim == 2:
        V = V[:, None, :]
    if V.ndim != 3 or V.shape[0] != X.shape[0] or V.shape[2] != X.shape[1]:
        raise InvalidEmbeddingError(
            f"views must be NxD or NxVxD with N={X.shape[0]}, D={X.shape[1]}, got shape {V.shape}")
    flat = as_embeddings(V.reshape(-1, V.shape[2]), dim=dim, name="views")
    total = Z + normalise(flat, power).reshape(V.shape).sum(axis=1)
    return normalise(total, 1.0)

