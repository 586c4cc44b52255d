"""Edge cases and bad input: each raises a clear exception from edge_classifier.errors."""

from __future__ import annotations

import numpy as np
import pytest

from edge_classifier.learning.heads import (HEAD_NAMES, EmptyHeadError, HeadError, InvalidEmbeddingError,
                                   InvalidLabelError, InvalidParameterError, SampleNotFoundError,
                                   StateError, UnknownHeadError, load_head, make_head)

from edge_classifier.learning.heads.synthetic import make_task as task

NAMES = ["c0", "c1", "c2", "c3"]


@pytest.fixture(scope="module")
def data():
    return task(seed=30)


@pytest.fixture(params=HEAD_NAMES)
def fitted(request, data):
    Xtr, ytr, _, _, _ = data
    return make_head(request.param).fit(Xtr, ytr, NAMES)


def test_error_hierarchy():
    for exc in (EmptyHeadError, InvalidEmbeddingError, InvalidLabelError, InvalidParameterError,
                SampleNotFoundError, StateError, UnknownHeadError):
        assert issubclass(exc, HeadError) and issubclass(exc, ValueError)
    assert issubclass(SampleNotFoundError, KeyError) and issubclass(UnknownHeadError, KeyError)
    assert str(UnknownHeadError("no such head")) == "no such head"


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_fit_on_no_samples(name):
    with pytest.raises(EmptyHeadError):
        make_head(name).fit(np.zeros((0, 8)), np.zeros(0, int), ["a"])


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_query_before_fit(name):
    head = make_head(name)
    for call in (head.predict, head.predict_proba, head.unknown_score):
        with pytest.raises(EmptyHeadError):
            call(np.ones((1, 8)))


def test_nan_and_inf_embeddings(fitted, data):
    Xtr, ytr, Xte, _, _ = data
    for bad in (np.nan, np.inf, -np.inf, 1e39):
        X = Xte.copy().astype(np.float64)
        X[3, 5] = bad
        with pytest.raises(InvalidEmbeddingError, match="NaN or infinity"):
            fitted.predict(X)
        with pytest.raises(InvalidEmbeddingError):
            fitted.add(X[3], 0)
    X = Xtr.copy()
    X[0, 0] = np.nan
    with pytest.raises(InvalidEmbeddingError):
        make_head(fitted.name).fit(X, ytr, NAMES)


def test_wrong_length_and_shape(fitted, data):
    _, _, Xte, _, _ = data
    with pytest.raises(InvalidEmbeddingError, match="length 31"):
        fitted.predict(Xte[:, :31])
    with pytest.raises(InvalidEmbeddingError, match="length"):
        fitted.add(np.ones(33), 0)
    with pytest.raises(InvalidEmbeddingError):
        fitted.add(Xte[:2], 0)  # two embeddings
    with pytest.raises(InvalidEmbeddingError):
        fitted.predict(Xte[None])  # 3-D
    with pytest.raises(InvalidEmbeddingError):
        fitted.predict([["a"] * 32])
    with pytest.raises(InvalidEmbeddingError):
        make_head("kernel").fit(np.ones((3, 0)), [0, 0, 0], ["a"])


def test_bad_views(data):
    Xtr, ytr, _, _, _ = data
    with pytest.raises(InvalidEmbeddingError, match="views"):
        make_head("kernel").fit(Xtr, ytr, NAMES, views=Xtr[:-1])
    views = Xtr.copy()
    views[2, 2] = np.nan
    with pytest.raises(InvalidEmbeddingError):
        make_head("kernel").fit(Xtr, ytr, NAMES, views=views)


def test_bad_labels(data):
    Xtr, ytr, _, _, _ = data
    head = make_head("kernel")
    with pytest.raises(InvalidLabelError, match="0..3"):
        head.fit(Xtr, ytr + 1, NAMES)
    with pytest.raises(InvalidLabelError):
        head.fit(Xtr, ytr - 1, NAMES)
    with pytest.raises(InvalidLabelError):
        head.fit(Xtr, ytr[:-1], NAMES)
    with pytest.raises(InvalidLabelError, match="integers"):
        head.fit(Xtr, ytr + 0.5, NAMES)
    with pytest.raises(InvalidLabelError):
        head.fit(Xtr, ytr.astype(str), NAMES)
    head.fit(Xtr, ytr, NAMES)
    with pytest.raises(InvalidLabelError):
        head.add(Xtr[0], 4)
    with pytest.raises(InvalidLabelError):
        head.add(Xtr[0], -1)


def test_bad_class_names(data):
    Xtr, ytr, _, _, _ = data
    for names in (["a", "a", "b", "c"], ["a", "", "b", "c"], "abcd", [], ["a", 1, "b", "c"]):
        with pytest.raises(InvalidLabelError):
            make_head("kernel").fit(Xtr, ytr, names)
    head = make_head("kernel").fit(Xtr, ytr, NAMES)
    with pytest.raises(InvalidLabelError, match="distinct"):
        head.add_class("c1")


def test_default_class_names(data):
    Xtr, ytr, _, _, _ = data
    assert make_head("kernel").fit(Xtr, ytr).classes == ["0", "1", "2", "3"]


def test_add_without_classes():
    with pytest.raises(InvalidLabelError, match="no classes"):
        make_head("kernel").add(np.ones(8), 0)


def test_add_to_head_with_classes_only():
    head = make_head("kernel")
    head.add_class("a")
    head.add_class("b")
    head.add(np.array([1.0, 0, 0]), 0)
    head.add(np.array([0.0, 1, 0]), 1)
    labels, proba = head.predict(np.array([[0.9, 0.1, 0], [0.1, 0.9, 0]]))
    assert list(proba.argmax(1)) == [0, 1] and head.dim == 3


def test_remove_missing_sample(fitted, data):
    Xtr, ytr, Xte, _, _ = data
    n = fitted.n_samples
    for bad in (n, -1, 1.5, "3", None, True):
        with pytest.raises(SampleNotFoundError):
            fitted.remove(bad)
    with pytest.raises(SampleNotFoundError):
        fitted.remove_sample(Xte[0], 0)
    with pytest.raises(SampleNotFoundError):
        fitted.remove_sample(Xtr[0], (int(ytr[0]) + 1) % 4)  # right vector, wrong class
    assert fitted.n_samples == n


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_remove_everything_then_start_again(name, data):
    Xtr, ytr, Xte, _, _ = data
    head = make_head(name).fit(Xtr[:3], ytr[:3], NAMES)
    for _ in range(3):
        head.remove(0)
    assert head.n_samples == 0
    with pytest.raises(EmptyHeadError):
        head.predict(Xte)
    head.add(Xtr[0], int(ytr[0]))
    head.add(Xtr[20], int(ytr[20]))
    labels, proba = head.predict(Xte)
    assert proba.shape == (Xte.shape[0], 4) and np.all(np.isfinite(proba))


def test_unknown_head_and_bad_parameters():
    with pytest.raises(UnknownHeadError, match="choose one of"):
        make_head("svm")
    with pytest.raises(InvalidParameterError):
        make_head("kernel", gamma=-1)
    with pytest.raises(InvalidParameterError):
        make_head("kernel", kernel="poly")
    with pytest.raises(InvalidParameterError):
        make_head("kernel", sigma=1)
    with pytest.raises(InvalidParameterError):
        make_head("knn", k=0)
    with pytest.raises(InvalidParameterError):
        make_head("softmax", cv_folds=1)
    with pytest.raises(InvalidParameterError):
        make_head("auto", kernel={"nope": 1})
    with pytest.raises(InvalidParameterError):
        make_head("least_squares", unknown_quantile=1.5)
    with pytest.raises(InvalidParameterError):
        make_head("least_squares", lam=float("nan"))


def test_corrupt_states(data):
    Xtr, ytr, _, _, _ = data
    arrays, meta = make_head("kernel").fit(Xtr, ytr, NAMES).to_state()
    cases = [
        ({k: v for k, v in arrays.items() if k != "Z"}, meta),
        (dict(arrays, Z=arrays["Z"][:, :5]), meta),
        (dict(arrays, y=arrays["y"][:-1]), meta),
        (dict(arrays, y=arrays["y"] + 10), meta),
        (arrays, dict(meta, format=99)),
        (arrays, dict(meta, params={"gamma": -3})),
        (arrays, dict(meta, params={"bogus": 1})),
        (arrays, {k: v for k, v in meta.items() if k != "classes"}),
        (arrays, "not a dict"),
    ]
    for a, m in cases:
        with pytest.raises(StateError):
            load_head(a, m)
    with pytest.raises(UnknownHeadError):
        load_head(arrays, dict(meta, head="svm"))
    sa, sm = make_head("softmax").fit(Xtr, ytr, NAMES).to_state()
    with pytest.raises(StateError):
        load_head(dict(sa, W=sa["W"][:, :2]), sm)
