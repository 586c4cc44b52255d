"""Metrics, calibration, linear algebra and the optimiser used by the heads."""

from __future__ import annotations

import numpy as np
import pytest

from edge_classifier.learning.heads import (InvalidLabelError, InvalidParameterError, MultiLabelHead, accuracy, auroc,
                                   classification_report, confusion_matrix, draw_shots,
                                   expected_calibration_error, stratified_split)
from edge_classifier.learning.heads.calibration import best_f1_threshold, fit_platt, fit_temperature, softmax
from edge_classifier.learning.heads.linalg import chol_inv, factor_append, factor_delete
from edge_classifier.learning.heads.optim import lbfgs

from edge_classifier.learning.heads.synthetic import make_blobs as blobs, make_centres as centres


def test_stratified_split_is_seeded_stratified_and_disjoint():
    y = np.repeat(np.arange(3), [10, 20, 7])
    tr, te = stratified_split(y, 0.3, np.random.default_rng(0))
    assert np.intersect1d(tr, te).size == 0 and tr.size + te.size == y.size
    assert list(np.bincount(y[te])) == [3, 6, 2]
    tr2, te2 = stratified_split(y, 0.3, np.random.default_rng(0))
    np.testing.assert_array_equal(te, te2)
    assert not np.array_equal(te, stratified_split(y, 0.3, np.random.default_rng(1))[1])
    with pytest.raises(InvalidParameterError):
        stratified_split(y, 1.0, np.random.default_rng(0))


def test_draw_shots():
    y = np.repeat(np.arange(3), [10, 20, 2])
    shots = draw_shots(y, 5, np.random.default_rng(0))
    assert list(np.bincount(y[shots])) == [5, 5, 2] and np.unique(shots).size == shots.size
    np.testing.assert_array_equal(draw_shots(y, None, np.random.default_rng(0)), np.arange(y.size))
    np.testing.assert_array_equal(shots, draw_shots(y, 5, np.random.default_rng(0)))
    with pytest.raises(InvalidParameterError):
        draw_shots(y, 0, np.random.default_rng(0))


def test_expected_calibration_error():
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1])
    # bins: 0.9 -> acc 0.5, conf 0.9 (2 samples); 0.6 -> acc 1 (1); 0.8 -> acc 1 (1)
    expected = (2 * 0.4 + 1 * 0.4 + 1 * 0.2) / 4
    assert expected_calibration_error(proba, y, bins=15) == pytest.approx(expected)
    assert expected_calibration_error(np.eye(3), [0, 1, 2]) == 0.0
    with pytest.raises(InvalidLabelError):
        expected_calibration_error(proba, y[:3])


def test_auroc():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([2, 0], [1]) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 400)
    brute = np.mean((a[:, None] > b[None]) + 0.5 * (a[:, None] == b[None]))
    assert auroc(a, b) == pytest.approx(brute)
    with pytest.raises(InvalidLabelError):
        auroc([], [1])


def test_confusion_and_report():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, -1, 2])
    cm = confusion_matrix(y_true, y_pred, 3, unknown=True)
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1]])
    with pytest.raises(InvalidLabelError):
        confusion_matrix(y_true, y_pred, 3)
    rep = classification_report(y_true, y_pred, 3)
    np.testing.assert_allclose(rep.precision, [1, 2 / 3, 1])
    np.testing.assert_allclose(rep.recall, [0.5, 1, 0.5])
    np.testing.assert_allclose(rep.f1, [2 / 3, 0.8, 2 / 3])
    np.testing.assert_array_equal(rep.support, [2, 2, 2])
    assert accuracy(y_pred, y_true) == pytest.approx(4 / 6)


def test_fit_temperature_recovers_true_temperature():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(4000, 5)) * 2.0
    P = softmax(F / 0.5)
    y = np.array([rng.choice(5, p=p) for p in P])
    assert fit_temperature(F, y, t0=1.0, weight=0.0) == pytest.approx(0.5, rel=0.1)
    assert fit_temperature(F[:0], y[:0], t0=0.3) == 0.3
    # all held-out predictions right: the prior keeps T finite
    assert 0 < fit_temperature(np.eye(5) * 3, np.arange(5), t0=1.0) < 1.0


def test_platt_and_f1_threshold():
    f = np.linspace(-2, 2, 41)
    t = f > 0.5
    a, b = fit_platt(f, t)
    assert a > 0 and -b / a == pytest.approx(0.5, abs=0.2)
    thr = best_f1_threshold(np.array([0.9, 0.8, 0.3, 0.2]), np.array([1, 1, 0, 0], bool))
    assert 0.3 < thr < 0.8
    assert best_f1_threshold(np.array([0.1, 0.2]), np.array([0, 0], bool)) == 0.5


def test_factor_updates_are_exact():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    A = np.exp(-0.2 * ((X[:, None] - X[None]) ** 2).sum(-1)) + 0.01 * np.eye(60)
    M = chol_inv(A[:59, :59], block=16)
    M2 = factor_append(M, A[:59, 59], A[59, 59])
    np.testing.assert_allclose(M2.T @ M2, np.linalg.inv(A), atol=1e-8)
    M3 = factor_delete(M2, 7)
    Ad = np.delete(np.delete(A, 7, 0), 7, 1)
    np.testing.assert_allclose(M3.T @ M3, np.linalg.inv(Ad), atol=1e-8)
    assert M3.shape == (59, 59)


def test_lbfgs_minimises_a_quadratic():
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(20, 20))
    Q = Q @ Q.T + np.eye(20)
    b = rng.normal(size=20)
    x, it = lbfgs(lambda v: (0.5 * v @ Q @ v - b @ v, Q @ v - b), np.zeros(20), gtol=1e-10, ftol=0.0)
    np.testing.assert_allclose(x, np.linalg.solve(Q, b), atol=1e-6)


def test_multilabel_head():
    rng = np.random.default_rng(40)
    C = centres(rng, 3, 32)
    X1, y1 = blobs(rng, 30, C)
    pairs = np.maximum(C[0] + C[1] + 1.0 * rng.normal(size=(30, 32)), 0)  # scenes with labels 0 and 1
    X = np.vstack([X1, pairs])
    labels = [[int(c)] for c in y1] + [[0, 1]] * 30
    head = MultiLabelHead().fit(X, labels, ["a", "b", "c"])
    assert head.thresholds.shape == (3,)
    Xq1, yq1 = blobs(rng, 20, C)
    present, proba = head.predict(Xq1)
    assert proba.shape == (60, 3) and np.all((proba >= 0) & (proba <= 1))
    assert np.mean(present[np.arange(60), yq1]) > 0.8
    assert np.mean(present.sum(1) == 1) > 0.7
    both = np.maximum(C[0] + C[1] + 1.0 * rng.normal(size=(20, 32)), 0)
    pb, _ = head.predict(both)
    assert np.mean(pb[:, 0] & pb[:, 1] & ~pb[:, 2]) > 0.7
    # exact incremental update, matrices or label lists
    inc = MultiLabelHead().fit(X[:-1], labels[:-1], ["a", "b", "c"])
    inc.add(X[-1], [0, 1])
    np.testing.assert_allclose(inc.predict_proba(Xq1), head.predict_proba(Xq1), atol=1e-8)
    inc.remove_sample(X[-1], [0, 1])
    assert inc.n_samples == X.shape[0] - 1
    with pytest.raises(InvalidLabelError):
        MultiLabelHead().fit(X, [[5]] * X.shape[0], ["a", "b", "c"])
    empty_c = MultiLabelHead().fit(X1[y1 < 2], [[int(c)] for c in y1[y1 < 2]], ["a", "b", "c"])
    np.testing.assert_array_equal(empty_c.predict_proba(Xq1)[:, 2], 0.0)


@pytest.mark.parametrize("m", [40, 600])  # float64, and float32 above nystrom.FLOAT32_ABOVE
def test_the_gram_accumulator_solves_the_regularised_system(m):
    from edge_classifier.learning.heads.nystrom import Gram
    rng = np.random.default_rng(m)
    chunks = [rng.normal(size=(n, m)) / np.sqrt(m) for n in (300, 7, 400)]
    gram = Gram(m)
    for Phi in chunks:
        gram.add(Phi.astype(np.float32) if m > 512 else Phi)
    P, M = gram.solve(0.5)
    Phi = np.vstack(chunks)
    expected = np.linalg.inv(Phi.T @ Phi + 0.5 * np.eye(m))
    tol = 1e-4 if m > 512 else 1e-10
    np.testing.assert_allclose(P, expected, atol=tol * np.abs(expected).max())
    M64 = M.astype(np.float64)
    np.testing.assert_allclose(M64.T @ M64, P, atol=1e-12 * np.abs(P).max())
    np.testing.assert_array_equal(P, P.T)
    # the factor as computed: float32 above FLOAT32_ABOVE (no float64 copy of it is made)
    assert P.dtype == np.float64 and M.dtype == (np.float32 if m > 512 else np.float64)
    assert np.allclose(M, np.tril(M))
    with pytest.raises(TypeError):  # spent: its sum was used as the work array
        gram.add(chunks[0])


def test_the_gram_accumulator_falls_back_to_float64_when_float32_is_not_enough(monkeypatch):
    from edge_classifier.learning.heads import nystrom
    real = nystrom.chol_inv

    def float64_only(A):  # as when float32 rounding makes the sum indefinite
        if A.dtype == np.float32:
            raise np.linalg.LinAlgError("Matrix is not positive definite")
        return real(A)
    rng = np.random.default_rng(5)
    Phi = rng.normal(size=(700, 600)) / np.sqrt(600)
    expected = np.linalg.inv(Phi.T @ Phi + 0.5 * np.eye(600))
    for failing in (float64_only, lambda A: real(A) * (np.nan if A.dtype == np.float32 else 1)):
        monkeypatch.setattr(nystrom, "chol_inv", failing)
        gram = nystrom.Gram(600)
        gram.add(Phi.astype(np.float32))
        P, M = gram.solve(0.5)
        assert M.dtype == np.float64
        np.testing.assert_allclose(P, expected, atol=1e-4 * np.abs(expected).max())


def test_kernel_values_in_place_are_the_same_values():
    from edge_classifier.learning.heads.nystrom import kernel_values
    rng = np.random.default_rng(3)
    A, B = rng.normal(size=(300, 16)), rng.normal(size=(40, 16))
    S = A @ B.T
    sa, sb = np.einsum("ij,ij->i", A, A), np.einsum("ij,ij->i", B, B)
    fresh = kernel_values(S, sa, sb, 0.3)
    inplace = S.copy()
    assert kernel_values(inplace, sa, sb, 0.3, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, fresh)
