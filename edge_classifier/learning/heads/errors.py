"""Exceptions raised by the heads.

Every error is a :class:`HeadError`, which is a :class:`ValueError` so that callers that only know
the builtin still catch it. Leaves also inherit the builtin that matches best (``KeyError`` for a
missing name or sample, ``LookupError`` for an index) so ``except KeyError`` keeps working.

:class:`HeadError` is also an :class:`~edge_classifier.errors.EdgeClassifierError`.
"""

from __future__ import annotations

from edge_classifier.errors import EdgeClassifierError


class HeadError(EdgeClassifierError, ValueError):
    """Root of every error raised on purpose by :mod:`edge_classifier.learning.heads`."""


class _NoQuoteKeyError(KeyError):
    """A ``KeyError`` whose ``str`` is the plain message (``KeyError`` quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class EmptyHeadError(HeadError):
    """The head holds no samples (never fitted, or every sample was removed)."""


class InvalidEmbeddingError(HeadError):
    """An embedding has the wrong shape or length, or holds NaN or infinity."""


class InvalidLabelError(HeadError):
    """A label is not an integer in ``0..C-1``, or labels and embeddings disagree in number."""


class InvalidParameterError(HeadError):
    """A hyper-parameter is out of range or of the wrong type."""


class SampleNotFoundError(HeadError, _NoQuoteKeyError):
    """:meth:`remove` was asked for a sample the head does not hold."""


class UnknownHeadError(HeadError, _NoQuoteKeyError):
    """:func:`make_head` or :func:`load_head` got a head name that is not registered."""


class StateError(HeadError):
    """A saved state (arrays + metadata) is incomplete, inconsistent or from another version."""
