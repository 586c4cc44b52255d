"""Behaviour of the NumPy heads on seeded synthetic embeddings."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from edge_classifier.learning.heads import (HEAD_NAMES, AutoHead, KernelHead, LeastSquaresHead, auroc,
                                   expected_calibration_error, load_head, make_head)

from edge_classifier.learning.heads.synthetic import make_blobs as blobs, make_centres as centres, make_task as task

NAMES = ["c0", "c1", "c2", "c3"]
EXACT = ["kernel", "least_squares", "imprinting", "knn", "auto"]


def _fresh(name, X, y, names=NAMES, **kw):
    return make_head(name, **kw).fit(X, y, names)


def _same(a, b, X, atol=1e-8):
    if isinstance(a, AutoHead):  # float32 queries; recalibrated explicitly after an edit
        a.refresh()
        atol = max(atol, 2e-6)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=atol, rtol=0)
    np.testing.assert_allclose(a.unknown_score(X), b.unknown_score(X), atol=atol * 100, rtol=atol * 100)
    assert a.temperature == pytest.approx(b.temperature, rel=atol * 100, abs=atol)
    assert a.unknown_threshold == pytest.approx(b.unknown_threshold, rel=atol * 100, abs=atol * 100)
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_accuracy_floor(name):
    Xtr, ytr, Xte, yte, _ = task(seed=1, noise=1.5)
    head = _fresh(name, Xtr, ytr)
    proba = head.predict_proba(Xte)
    assert proba.shape == (yte.size, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert np.mean(proba.argmax(axis=1) == yte) >= 0.9


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_predict_returns_labels_and_probabilities(name):
    Xtr, ytr, Xte, _, _ = task(seed=2)
    head = _fresh(name, Xtr, ytr)
    labels, proba = head.predict(Xte)
    assert labels.dtype == np.int64 and labels.shape == (Xte.shape[0],)
    assert set(np.unique(labels)) <= {-1, 0, 1, 2, 3}
    known = labels >= 0
    np.testing.assert_array_equal(labels[known], proba[known].argmax(axis=1))
    one, p1 = head.predict(Xte[0])  # one embedding is a batch of one
    assert one.shape == (1,) and p1.shape == (1, 4)
    assert head.classes == NAMES and head.dim == 32 and head.n_samples == Xtr.shape[0]


@pytest.mark.parametrize("name", EXACT)
def test_add_equals_fresh_fit(name):
    Xtr, ytr, Xte, _, _ = task(seed=3)
    order = np.random.default_rng(0).permutation(ytr.size)
    Xtr, ytr = Xtr[order], ytr[order]
    head = _fresh(name, Xtr[:20], ytr[:20])
    for i in range(20, ytr.size):
        assert head.add(Xtr[i], int(ytr[i])) == i
    _same(head, _fresh(name, Xtr, ytr), Xte)


@pytest.mark.parametrize("name", EXACT)
def test_remove_equals_fresh_fit(name):
    Xtr, ytr, Xte, _, _ = task(seed=4)
    head = _fresh(name, Xtr, ytr)
    keep = np.ones(ytr.size, bool)
    for i in [0, 17, 5, 40]:  # indices into the shrinking store
        idx = np.flatnonzero(keep)[i]
        head.remove(i)
        keep[idx] = False
    _same(head, _fresh(name, Xtr[keep], ytr[keep]), Xte)


def test_remove_sample_by_value():
    Xtr, ytr, Xte, _, _ = task(seed=5)
    head = _fresh("kernel", Xtr, ytr)
    assert head.remove_sample(Xtr[7], int(ytr[7])) == 7
    _same(head, _fresh("kernel", np.delete(Xtr, 7, 0), np.delete(ytr, 7)), Xte)


def test_kernel_float32_path_agrees_with_float64():
    rng = np.random.default_rng(6)
    C = centres(rng, 4, 24)
    X, y = blobs(rng, 140, C, 1.5)  # 560 samples: float32 factor
    Xq, _ = blobs(rng, 20, C, 1.5)
    big = KernelHead().fit(X, y, NAMES)
    ref = KernelHead()
    ref.float64_below = 10_000
    ref.fit(X, y, NAMES)
    assert big._M.dtype == np.float32 and ref._M.dtype == np.float64
    np.testing.assert_allclose(big.predict_proba(Xq), ref.predict_proba(Xq), atol=1e-3)
    big.add(Xq[0], 1)
    ref.add(Xq[0], 1)
    big.remove(3)
    ref.remove(3)
    np.testing.assert_allclose(big.predict_proba(Xq), ref.predict_proba(Xq), atol=1e-3)


def test_softmax_update_matches_fresh_weights():
    Xtr, ytr, Xte, _, _ = task(seed=7)
    head = _fresh("softmax", Xtr[:-3], ytr[:-3], tol=1e-8)
    for i in range(ytr.size - 3, ytr.size):
        head.add(Xtr[i], int(ytr[i]))
    fresh = _fresh("softmax", Xtr, ytr, tol=1e-8)
    np.testing.assert_allclose(head.decision_function(Xte), fresh.decision_function(Xte), atol=1e-3)


@pytest.mark.parametrize("name", list(HEAD_NAMES) + ["multilabel"])
def test_state_round_trip(name):
    Xtr, ytr, Xte, _, _ = task(seed=8)
    labels = [[int(c)] for c in ytr] if name == "multilabel" else ytr
    head = make_head(name).fit(Xtr, labels, NAMES)
    arrays, meta = head.to_state()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf) as npz:
        loaded = load_head(dict(npz), json.loads(json.dumps(meta)))
    assert type(loaded) is type(head) and loaded.classes == NAMES
    np.testing.assert_allclose(loaded.predict_proba(Xte), head.predict_proba(Xte), atol=1e-9)
    np.testing.assert_allclose(loaded.unknown_score(Xte), head.unknown_score(Xte), atol=1e-7)
    new_label = [1] if name == "multilabel" else 1
    head.add(Xte[0], new_label)
    loaded.add(Xte[0], new_label)
    np.testing.assert_allclose(loaded.predict_proba(Xte), head.predict_proba(Xte), atol=1e-6)


def test_auto_is_the_kernel_head_within_its_landmark_budget():
    Xtr, ytr, Xte, _, _ = task(seed=9)
    head = make_head("auto", landmarks=ytr.size)
    head.fit(Xtr, ytr, NAMES)
    assert head.n_landmarks == ytr.size
    _same(head, _fresh("kernel", Xtr, ytr), Xte, atol=2e-6)
    arrays, meta = head.to_state()
    assert isinstance(load_head(arrays, meta), AutoHead)


def test_calibration_is_sane():
    Xtr, ytr, Xte, yte, _ = task(seed=10, n_train=30, n_test=200, noise=3.5)  # overlapping classes
    head = _fresh("kernel", Xtr, ytr)
    proba = head.predict_proba(Xte)
    acc = np.mean(proba.argmax(1) == yte)
    assert 0.4 < acc < 0.99  # a task where confidence matters
    assert expected_calibration_error(proba, yte) < 0.1
    assert abs(proba.max(axis=1).mean() - acc) < 0.1


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_unknown_cluster_is_detected(name):
    rng = np.random.default_rng(11)
    C = centres(rng, 5, 32)
    Xtr, ytr = blobs(rng, 20, C[:4])
    Xkn, _ = blobs(rng, 50, C[:4])
    Xun, _ = blobs(rng, 50, C[4:])
    head = _fresh(name, Xtr, ytr)
    s_kn, s_un = head.unknown_score(Xkn), head.unknown_score(Xun)
    assert auroc(s_un, s_kn) > 0.95
    assert np.mean(head.predict(Xun)[0] == -1) > 0.8
    assert np.mean(head.predict(Xkn)[0] == -1) < 0.2


def test_zero_embedding_is_unknown():
    Xtr, ytr, _, _, _ = task(seed=12)
    head = _fresh("kernel", Xtr, ytr)
    labels, _ = head.predict(np.zeros((1, 32)))
    assert labels[0] == -1


def test_single_class_is_that_class_or_unknown():
    rng = np.random.default_rng(13)
    C = centres(rng, 2, 32)
    X, y = blobs(rng, 20, C[:1])
    Xo, _ = blobs(rng, 20, C[1:])
    head = make_head("auto").fit(X, y, ["only"])
    labels, proba = head.predict(np.vstack([X, Xo]))
    np.testing.assert_array_equal(proba, 1.0)
    assert set(labels[:20]) <= {0, -1} and np.mean(labels[:20] == 0) > 0.8
    assert np.mean(labels[20:] == -1) > 0.8


def test_class_without_samples_is_never_predicted():
    Xtr, ytr, Xte, _, _ = task(seed=14)
    keep = ytr != 2
    head = _fresh("kernel", Xtr[keep], ytr[keep])
    proba = head.predict_proba(Xte)
    np.testing.assert_array_equal(proba[:, 2], 0.0)
    assert list(head.class_counts) == [15, 15, 0, 15]


def test_add_class_then_teach_it():
    Xtr, ytr, Xte, yte, _ = task(seed=15)
    head = _fresh("kernel", Xtr[ytr < 3], ytr[ytr < 3], NAMES[:3])
    assert head.add_class("c3") == 3
    assert head.predict_proba(Xte).shape == (Xte.shape[0], 4)
    for x in Xtr[ytr == 3]:
        head.add(x, 3)
    assert np.mean(head.predict_proba(Xte).argmax(1) == yte) > 0.9


def test_duplicates_are_allowed():
    Xtr, ytr, Xte, _, _ = task(seed=16)
    X2, y2 = np.vstack([Xtr, Xtr[:5]]), np.concatenate([ytr, ytr[:5]])
    for name in HEAD_NAMES:
        head = _fresh(name, X2, y2)
        assert np.all(np.isfinite(head.predict_proba(Xte)))
        head.add(Xtr[0], int(ytr[0]))
        assert np.all(np.isfinite(head.unknown_score(Xte)))


def test_arguments_are_not_mutated():
    Xtr, ytr, Xte, _, _ = task(seed=17)
    Xc, yc, Xtc, views = Xtr.copy(), ytr.copy(), Xte.copy(), Xtr[:, ::-1].copy()
    vc = views.copy()
    for name in HEAD_NAMES:
        head = make_head(name).fit(Xtr, ytr, NAMES, views=views)
        head.add(Xte[0], 1, views=Xte[1])
        head.predict(Xte)
        np.testing.assert_array_equal(Xtr, Xc)
        np.testing.assert_array_equal(ytr, yc)
        np.testing.assert_array_equal(Xte, Xtc)
        np.testing.assert_array_equal(views, vc)


def test_views_are_averaged_into_one_point():
    Xtr, ytr, Xte, _, _ = task(seed=18)
    flipped = Xtr[:, ::-1]
    head = _fresh("kernel", Xtr, ytr)
    with_views = make_head("kernel").fit(Xtr, ytr, NAMES, views=flipped)
    assert with_views.n_samples == head.n_samples
    stacked = make_head("kernel").fit(Xtr, ytr, NAMES, views=flipped[:, None, :])
    np.testing.assert_allclose(stacked.predict_proba(Xte), with_views.predict_proba(Xte))
    inc = make_head("kernel").fit(Xtr[:-1], ytr[:-1], NAMES, views=flipped[:-1])
    inc.add(Xtr[-1], int(ytr[-1]), views=flipped[-1])
    _same(inc, with_views, Xte)


def test_scale_invariance_of_raw_embeddings():
    Xtr, ytr, Xte, _, _ = task(seed=19)
    a = _fresh("kernel", Xtr, ytr)
    b = _fresh("kernel", Xtr * 0.0235, ytr)  # e.g. a dequantisation scale
    np.testing.assert_allclose(a.predict_proba(Xte), b.predict_proba(Xte * 7.0), atol=1e-5)


def test_least_squares_and_kernel_loo_scores_are_exact():
    Xtr, ytr, _, _, _ = task(seed=20, n_train=8)
    for head in (LeastSquaresHead().fit(Xtr, ytr, NAMES), KernelHead().fit(Xtr, ytr, NAMES)):
        loo = head._loo_decision()
        for i in [0, 9, 31]:
            other = type(head)(**head.params()).fit(np.delete(Xtr, i, 0), np.delete(ytr, i), NAMES)
            Zq, S = other._query(Xtr[i])
            if isinstance(head, KernelHead):  # LOO with the targets centred on all samples
                Tc = np.delete(head._Tc, i, axis=0)
                Kx = other._k(S, np.einsum("ij,ij->i", Zq, Zq), other._sq)
                direct = (Kx @ (other._M.T @ (other._M @ Tc)))[0]
            else:
                direct = other._decision(Zq, S)[0]
            np.testing.assert_allclose(loo[i], direct, atol=1e-8)
