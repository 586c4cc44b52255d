"""Head names, construction by name and rebuilding from a saved state."""

from __future__ import annotations

from typing import Any, Dict, Tuple, Union

import numpy as np

from .auto import AutoHead
from .base import Head
from edge_classifier.errors import InvalidParameterError, StateError, UnknownHeadError
from .kernel import KernelHead
from .least_squares import LeastSquaresHead
from .multilabel import MultiLabelHead
from .prototypes import ImprintingHead, KnnHead
from .softmax import SoftmaxHead

__all__ = ["HEAD_NAMES", "AnyHead", "load_head", "make_head"]

AnyHead = Union[Head, AutoHead]

_CLASSES = {
    "auto": AutoHead,
    "least_squares": LeastSquaresHead,
    "kernel": KernelHead,
    "softmax": SoftmaxHead,
    "imprinting": ImprintingHead,
    "knn": KnnHead,
    "multilabel": MultiLabelHead,
}

#: Single-label heads, the default first. ("multilabel" is also accepted by make_head.)
HEAD_NAMES: Tuple[str, ...] = ("auto", "least_squares", "kernel", "softmax", "imprinting", "knn")


def make_head(name: str = "auto", **params: Any) -> AnyHead:
    """A new, empty head called ``name`` with hyper-parameters ``params``.

    Raises :class:`UnknownHeadError` for an unknown name and :class:`InvalidParameterError`
    for an unknown or out-of-range parameter.
    """
    try:
        cls = _CLASSES[name]
    except (KeyError, TypeError):
        raise UnknownHeadError(f"unknown head {name!r}; choose one of {', '.join(_CLASSES)}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise InvalidParameterError(f"bad parameter for head {name!r}: {exc}") from None


def load_head(arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> AnyHead:
    """Rebuild a head from ``head.to_state()`` output (arrays from .npz, meta from JSON).

    Raises :class:`UnknownHeadError` if the head name is unknown and :class:`StateError` if the
    state is incomplete or inconsistent.
    """
    if not isinstance(meta, dict) or not isinstance(arrays, dict) and not hasattr(arrays, "keys"):
        raise StateError("a head state is a dict of arrays and a dict of metadata")
    name = meta.get("head")
    if name not in _CLASSES:
        raise UnknownHeadError(f"saved state is of unknown head {name!r}")
    return _CLASSES[name].from_state(dict(arrays), meta)
