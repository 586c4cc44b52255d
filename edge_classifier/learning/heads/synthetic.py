"""Seeded synthetic embeddings for tests, demos and self-checks (like Coral's learn tests).

Embeddings imitate a ReLU backbone: non-negative, class centres drawn from a gamma
distribution, Gaussian noise, clipped at zero. Everything is drawn from the given
:class:`numpy.random.Generator`.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["make_blobs", "make_centres", "make_task"]


def make_centres(rng: np.random.Generator, n_classes: int = 4, dim: int = 32, scale: float = 2.0) -> np.ndarray:
    """Class centres (C x D float64), non-negative."""
    return scale * rng.gamma(1.0, 1.0, size=(n_classes, dim))


def make_blobs(rng: np.random.Generator, n_per_class, centres: np.ndarray,
               noise: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` samples (int or C ints) around each centre (C x D): X (N x D float32), y (N)."""
    counts = np.broadcast_to(np.asarray(n_per_class), (centres.shape[0],))
    y = np.repeat(np.arange(centres.shape[0]), counts).astype(np.int64)
    X = np.maximum(centres[y] + noise * rng.normal(size=(y.size, centres.shape[1])), 0.0)
    return X.astype(np.float32), y


def make_task(seed: int = 0, n_classes: int = 4, dim: int = 32, n_train: int = 15, n_test: int = 40,
              noise: float = 1.0):
    """(X_train, y_train, X_test, y_test, centres) of one seeded synthetic task."""
    rng = np.random.default_rng(seed)
    C = make_centres(rng, n_classes, dim)
    Xtr, ytr = make_blobs(rng, n_train, C, noise)
    Xte, yte = make_blobs(rng, n_test, C, noise)
    return Xtr, ytr, Xte, yte, C
