"""The ``auto`` head's cost-saving paths give the same answers as the plain ones: a loaded head
shares no array it edits with the caller, removals leave holes that no snapshot sees filled, a
saved solution is used as saved, and the load-time checks still catch every non-finite value.

    pytest -q tests/test_heads_auto_costs.py
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_classifier.errors import InvalidEmbeddingError, StateError
from edge_classifier.learning.heads import AutoHead, load_head, make_head
from edge_classifier.learning.heads.autostate import _all_finite
from edge_classifier.learning.heads.synthetic import make_task

NAMES = ["c0", "c1", "c2", "c3"]


def _task(seed=0, n=25):
    return make_task(seed, n_classes=4, dim=32, n_train=n, n_test=40)


def test_two_heads_loaded_from_the_same_arrays_do_not_share_edits():
    Xtr, ytr, Xte, _, _ = _task(11, n=30)
    arrays, meta = make_head("auto", landmarks=40).fit(Xtr, ytr, NAMES).to_state()
    a, b = load_head(arrays, meta), load_head(arrays, meta)
    before = b.decision_function(Xte)
    saved_P = arrays["P"].copy()
    for i in range(5):
        a.add(Xte[i], i % 4)  # updates a's P in place: must not be the caller's (or b's) array
    a.remove(0)
    np.testing.assert_array_equal(arrays["P"], saved_P)
    np.testing.assert_array_equal(b.decision_function(Xte), before)


def test_saved_points_share_the_heads_buffer_without_holes_and_no_edit_crosses_over():
    Xtr, ytr, Xte, _, _ = _task(14, n=30)
    head = make_head("auto", landmarks=40).fit(Xtr[:80], ytr[:80], NAMES)
    arrays, meta = head.to_state()
    assert np.shares_memory(arrays["points"], head._pts.buf)  # no 2*N*D-byte copy for a save
    frozen = {k: v.copy() for k, v in arrays.items()}
    loaded = load_head(arrays, meta)
    reference = load_head(frozen, meta)
    for i in range(80, 120):  # past the buffer's spare rows: it grows, rows below stay
        head.add(Xtr[i], int(ytr[i]))
    head.remove_many([0, 5, 9])
    head.refresh()
    np.testing.assert_array_equal(arrays["points"], frozen["points"])
    np.testing.assert_array_equal(loaded.decision_function(Xte), reference.decision_function(Xte))
    expect = head.decision_function(Xte)
    for h in (loaded, reference):
        h.add(Xte[0], 1)
        h.remove(3)
        h.refresh()
    np.testing.assert_array_equal(loaded.decision_function(Xte), reference.decision_function(Xte))
    np.testing.assert_array_equal(head.decision_function(Xte), expect)
    holes, _ = head.to_state()  # removed samples left holes: a compact copy
    assert not np.shares_memory(holes["points"], head._pts.buf)
    assert holes["points"].shape[0] == head.n_samples


def test_a_loaded_head_predicts_with_the_saved_solution_and_edits_like_the_original():
    Xtr, ytr, Xte, _, _ = _task(12, n=30)
    head = make_head("auto", landmarks=40).fit(Xtr[:100], ytr[:100], NAMES)
    for i in range(100, 110):
        head.add(Xtr[i], int(ytr[i]))  # rank-one updated solution, not a fresh solve
    arrays, meta = head.to_state()
    assert "H" in arrays and "GA" in arrays
    loaded = load_head(arrays, meta)
    np.testing.assert_array_equal(loaded.decision_function(Xte), head.decision_function(Xte))
    for h in (head, loaded):
        h.add(Xtr[110], int(ytr[110]))
        h.remove(4)
    np.testing.assert_array_equal(loaded.decision_function(Xte), head.decision_function(Xte))


def test_a_state_without_the_saved_solution_is_solved_on_load():
    Xtr, ytr, Xte, _, _ = _task(13)
    head = make_head("auto").fit(Xtr, ytr, NAMES)
    arrays, meta = head.to_state()
    del arrays["H"], arrays["GA"]  # as an older version saved it
    np.testing.assert_allclose(load_head(arrays, meta).decision_function(Xte),
                               head.decision_function(Xte), atol=1e-6)


def test_removals_then_additions_equal_a_fresh_fit_of_the_same_samples():
    Xtr, ytr, Xte, _, _ = _task(14, n=30)  # 120 samples: the point buffer fills and grows
    head = make_head("auto").fit(Xtr[:60], ytr[:60], NAMES)
    kept = list(range(60))
    for i in range(60, 120):
        head.add(Xtr[i], int(ytr[i]))
        kept.append(i)
        if i % 3 == 0:
            j = (7 * i) % len(kept)
            head.remove(j)
            del kept[j]
    head.refresh()
    fresh = make_head("auto").fit(Xtr[kept], ytr[kept], NAMES)
    np.testing.assert_array_equal(head.labels, ytr[kept])
    np.testing.assert_allclose(head.predict_proba(Xte), fresh.predict_proba(Xte), atol=1e-6)
    assert head.remove_sample(Xtr[kept[5]], int(ytr[kept[5]])) == 5


def test_a_calibration_job_is_not_changed_by_later_removals_and_additions():
    Xtr, ytr, _, _, _ = _task(15, n=30)
    head = make_head("auto", landmarks=40).fit(Xtr[:64], ytr[:64], NAMES)
    twin = make_head("auto", landmarks=40).fit(Xtr[:64], ytr[:64], NAMES)
    job = head.calibration_job()
    for i in range(64, 120):  # removals leave holes; additions write rows, then grow the buffer
        head.remove(0)
        head.add(Xtr[i], int(ytr[i]))
    result, expected = job(), twin.calibration_job()()
    np.testing.assert_array_equal(result["loo"], expected["loo"])
    assert result["temperature"] == expected["temperature"]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_finite_check_finds_one_bad_value_anywhere(dtype, bad):
    a = np.random.default_rng(0).normal(size=(300, 257)).astype(dtype)
    assert _all_finite(a)
    for where in [(0, 0), (150, 100), (299, 256)]:
        b = a.copy()
        b[where] = bad
        assert not _all_finite(b)


def test_a_non_finite_stored_point_is_a_state_error():
    Xtr, ytr, _, _, _ = _task(16)
    arrays, meta = make_head("auto").fit(Xtr, ytr, NAMES).to_state()
    arrays["points"][-1, -1] = np.inf
    with pytest.raises(StateError):
        load_head(arrays, meta)
    assert AutoHead.name == meta["head"]


def test_pending_rank_one_edits_equal_the_edited_matrix_before_and_after_folding():
    from edge_classifier.learning.heads.lowrank import PendingMatrix
    rng = np.random.default_rng(17)
    A = rng.normal(size=(40, 40))
    base = A @ A.T
    dense = base.copy()
    P = PendingMatrix(base, shared=True, capacity=4)
    for j in range(10):  # folds twice (after 4 and 8 edits), 2 left pending
        u, w = rng.normal(size=40), float(rng.normal())
        P.add(u, w)
        dense += w * np.outer(u, u)
        x, X = rng.normal(size=40), rng.normal(size=(40, 3))
        np.testing.assert_allclose(P.matvec(x), dense @ x, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(P.matvec(X), dense @ X, rtol=1e-10, atol=1e-10)
    assert P.pending == 2
    np.testing.assert_array_equal(base, (A @ A.T))  # shared: copied before the first fold
    np.testing.assert_allclose(P.full(), dense, rtol=1e-10, atol=1e-10)
    assert P.pending == 0


def test_many_edits_without_a_recalibration_fold_and_stay_exact():
    Xtr, ytr, Xte, _, _ = _task(18, n=30)  # 120 samples, 40 landmarks: 100 edits fold P
    head = make_head("auto", landmarks=40).fit(Xtr[:20], ytr[:20], NAMES)
    for i in range(20, 120):
        head.add(Xtr[i], int(ytr[i]))
    for _ in range(30):
        head.remove(3)
    before = head.decision_function(Xte)
    head.refresh()  # rebuilt from the points; 130 updates drift by ~2e-5 (as before the change)
    np.testing.assert_allclose(head.decision_function(Xte), before, atol=1e-4)


def test_the_fused_frame_path_gives_the_general_paths_values_and_refuses_odd_frames():
    Xtr, ytr, Xte, _, _ = _task(20)
    Xtr, Xte = np.abs(Xtr).astype(np.float32), np.abs(Xte).astype(np.float32)
    head = make_head("auto", landmarks=60, gamma=50.0).fit(Xtr, ytr, NAMES)  # exp(2g) > float32 max
    rng = np.random.default_rng(19)
    for i in range(10):
        x = Xte[i][None] * np.float32(rng.choice([1e-3, 1.0, 30.0]))
        x[0, rng.integers(0, x.shape[1], 5)] = 0.0
        F, S = head._query_frame(x)
        F64, S64 = head._query(np.vstack([x, x]))  # two rows: the general path
        np.testing.assert_allclose(S[0], S64[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(F[0], F64[0], rtol=1e-4, atol=1e-6)
        assert np.all(np.isfinite(F))
    zero = np.zeros((1, Xte.shape[1]), np.float32)  # |z|^2 = 0: the point's own factor
    np.testing.assert_allclose(head._query_frame(zero)[0][0], head._query(np.vstack([zero, zero]))[0][0],
                               rtol=1e-4, atol=1e-7)
    good = Xte[:1]
    for odd in (good.astype(np.float64), good[0], np.vstack([good, good]), -good, good * np.nan,
                good + np.inf, np.full_like(good, 3e38), good[:, :-1]):
        assert head._query_frame(odd) is None  # the general path decides, and raises
    with pytest.raises(InvalidEmbeddingError):
        head.predict_detailed(good * np.nan)
    labels, P, score = head.predict_detailed(np.full_like(good, 3e38))  # finite: normalised
    assert np.all(np.isfinite(P)) and np.isfinite(score[0])


def test_a_frame_scores_as_its_row_in_a_batch_and_follows_every_edit():
    Xtr, ytr, Xte, _, _ = _task(20)
    Xtr, Xte = np.abs(Xtr).astype(np.float32), np.abs(Xte).astype(np.float32)  # like a backbone's
    head = make_head("auto", landmarks=60).fit(Xtr, ytr, NAMES)
    for edit in ("none", "remove", "add_class", "add"):
        if edit == "remove":
            head.remove_many([0, 1, 2])  # orphan landmarks: no longer "known"
        elif edit == "add_class":
            head.add_class("c4")  # no samples: probability 0
        elif edit == "add":
            head.add(Xte[5], 4)
        labels, P, score = head.predict_detailed(Xte)
        fresh = load_head(*head.to_state())  # no cached per-frame constants
        np.testing.assert_array_equal(fresh.unknown_score(Xte), score)
        np.testing.assert_array_equal(fresh.predict_proba(Xte), P)
        for i in (0, 7):
            li, Pi, si = head.predict_detailed(Xte[i][None])
            np.testing.assert_allclose(Pi[0], P[i], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(si[0], score[i], rtol=1e-5, atol=1e-6)
            assert li[0] == labels[i]
        if edit == "add_class":
            assert np.all(P[:, 4] == 0.0)
        if edit == "add":
            assert P[5, 4] > 0.0


def test_kernel_values_by_row_blocks_equal_the_one_expression():
    from edge_classifier.learning.heads.nystrom import kernel_values
    rng = np.random.default_rng(21)
    for dtype in (np.float32, np.float64):
        Z = rng.normal(size=(700, 16)).astype(dtype)
        W = rng.normal(size=(90, 16)).astype(dtype)
        S, a, b = Z @ W.T, np.einsum("ij,ij->i", Z, Z), np.einsum("ij,ij->i", W, W)
        t = S.dtype.type
        d2 = np.maximum(a.astype(dtype)[:, None] + b.astype(dtype)[None, :] - t(2) * S, 0)
        np.testing.assert_array_equal(kernel_values(S, a, b, 0.5), np.exp(d2 * t(-0.5)))
