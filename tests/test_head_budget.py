"""The ``auto`` head's landmark budget: exact updates, exactness within the budget, saved heads
that load without a fit, background recalibration and refits in the Learner, eval as deployed."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from edge_classifier.datasets.evaluate import few_shot_eval, format_table
from edge_classifier.errors import StateError
from edge_classifier.learning.heads import AutoHead, load_head, make_head
from edge_classifier.learning.heads import autocal
from edge_classifier.learning.heads.synthetic import make_blobs, make_centres, make_task

NAMES = ["c0", "c1", "c2", "c3"]


def _task(seed=0, n=25):
    return make_task(seed, n_classes=4, dim=32, n_train=n, n_test=40)


def test_within_the_budget_it_is_exact_kernel_ridge():
    Xtr, ytr, Xte, _, _ = _task(1)
    auto = make_head("auto").fit(Xtr, ytr, NAMES)
    kernel = make_head("kernel").fit(Xtr, ytr, NAMES)
    assert auto.n_landmarks == ytr.size
    np.testing.assert_allclose(auto.predict_proba(Xte), kernel.predict_proba(Xte), atol=1e-6)
    np.testing.assert_allclose(auto.loo_proba(), kernel.loo_proba(), atol=1e-9)
    np.testing.assert_allclose(auto.unknown_score(Xte), kernel.unknown_score(Xte), atol=1e-4)
    assert auto.temperature == pytest.approx(kernel.temperature, rel=1e-9)
    assert auto.unknown_threshold == pytest.approx(kernel.unknown_threshold, rel=1e-9)


def test_beyond_the_budget_updates_equal_a_rebuild_of_the_same_landmarks():
    Xtr, ytr, Xte, _, _ = _task(2, n=30)  # 120 samples, 40 landmarks
    head = make_head("auto", landmarks=40).fit(Xtr[:10], ytr[:10], NAMES)
    for i in range(10, ytr.size):
        head.add(Xtr[i], int(ytr[i]))
    assert head.n_landmarks == 40 and head.n_samples == 120
    head.remove_many([3, 50, 51, 119])
    head.remove(7)
    before = head.decision_function(Xte)
    head.refresh()  # rebuilds the m x m system from the stored points
    assert not head.calibration_stale
    np.testing.assert_allclose(head.decision_function(Xte), before, atol=1e-5)


def test_a_capture_changes_the_very_next_prediction():
    Xtr, ytr, Xte, _, _ = _task(3)
    head = make_head("auto").fit(Xtr, ytr, NAMES)
    before = head.decision_function(Xte[:1])
    head.add(Xte[0], 2)
    assert head.calibration_stale  # the threshold waits for a recalibration ...
    after = head.decision_function(Xte[:1])  # ... the scores do not
    assert after[0, 2] > before[0, 2] + 0.1


def test_batch_removal_equals_one_by_one_and_a_fresh_fit():
    Xtr, ytr, Xte, _, _ = _task(4)
    a = make_head("auto").fit(Xtr, ytr, NAMES)
    b = make_head("auto").fit(Xtr, ytr, NAMES)
    gone = [0, 9, 10, 44, 99]
    a.remove_many(gone)
    for i in sorted(gone, reverse=True):
        b.remove(i)
    keep = np.delete(np.arange(ytr.size), gone)
    fresh = make_head("auto").fit(Xtr[keep], ytr[keep], NAMES)
    for h in (a, b):
        h.refresh()
        np.testing.assert_allclose(h.predict_proba(Xte), fresh.predict_proba(Xte), atol=1e-6)
        np.testing.assert_array_equal(h.labels, ytr[keep])
    assert a.n_orphans == len(gone)  # their landmarks stay until the next fit ...
    rng = np.random.default_rng(0)
    far = rng.normal(size=(1, 32)) * 50  # ... but a removed sample is not "known" any more
    assert np.isfinite(a.unknown_score(far)).all()


def test_saved_head_loads_without_any_fit(monkeypatch):
    Xtr, ytr, Xte, _, _ = _task(5, n=30)
    head = make_head("auto", landmarks=50).fit(Xtr, ytr, NAMES)
    head.add(Xte[0], 1)
    head.refresh()
    arrays, meta = head.to_state()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)

    def no_fit(*args, **kwargs):
        raise AssertionError("loading refitted the head")
    monkeypatch.setattr(autocal, "calibrate", no_fit)
    monkeypatch.setattr(AutoHead, "_fit_merged", no_fit)  # fit and fit_rows
    with np.load(buf) as npz:
        loaded = load_head(dict(npz), json.loads(json.dumps(meta)))
    np.testing.assert_array_equal(loaded.predict_proba(Xte), head.predict_proba(Xte))
    np.testing.assert_array_equal(loaded.unknown_score(Xte), head.unknown_score(Xte))
    assert loaded.unknown_threshold == head.unknown_threshold and not loaded.calibration_stale


@pytest.mark.parametrize("damage", ["shape", "nan", "landmark", "format"])
def test_a_damaged_state_is_a_state_error(damage):
    Xtr, ytr, _, _, _ = _task(6)
    arrays, meta = make_head("auto").fit(Xtr, ytr, NAMES).to_state()
    if damage == "shape":
        arrays["P"] = arrays["P"][:-1]
    elif damage == "nan":
        arrays["b"][0, 0] = np.nan
    elif damage == "landmark":
        arrays["land"][0] = 10_000
    else:
        meta["format"] = 99
    with pytest.raises(StateError):
        load_head(arrays, meta)


def test_calibration_job_runs_apart_and_a_late_result_keeps_the_head_stale():
    Xtr, ytr, Xte, _, _ = _task(7)
    head = make_head("auto").fit(Xtr[:-2], ytr[:-2], NAMES)
    head.add(Xtr[-2], int(ytr[-2]))
    job = head.calibration_job()
    head.add(Xtr[-1], int(ytr[-1]))  # the head changes while the job "runs"
    assert head.apply_calibration(job()) is False and head.calibration_stale
    assert head.apply_calibration(head.calibration_job()()) is True
    fresh = make_head("auto").fit(Xtr, ytr, NAMES)
    np.testing.assert_allclose(head.predict_proba(Xte), fresh.predict_proba(Xte), atol=1e-6)


def test_eval_reports_accuracy_as_deployed_and_the_unknown_rate():
    rng = np.random.default_rng(8)
    C = make_centres(rng, 3, 16)
    X, y = make_blobs(rng, 30, C, 1.0)
    views = X[:, None, :]
    results = few_shot_eval(views, y, ["a", "b", "c"], ["auto", "knn"], [5, "all"], seeds=2)
    for r in results:
        assert 0.0 < r.unknown_rate < 0.5  # about 5 % of known frames by design, never all
        assert r.deployed <= r.accuracy  # an unknown answer is never right
        assert r.deployed == pytest.approx(r.accuracy - r.unknown_rate, abs=r.unknown_rate + 1e-9)
        d = r.as_dict()
        assert d["accuracy_deployed"] == round(r.deployed, 4)
        assert d["unknown_rate"] == round(r.unknown_rate, 4)
    assert "as deployed" in format_table(results, [5, "all"])


# ---------------------------------------------------------------- the Learner's background work
class _Gate:
    """Background work that starts only when ``open()`` is called (no sleeps, no races)."""

    def __init__(self, monkeypatch):
        import threading
        from edge_classifier.learning import learner as learner_module
        self.event = threading.Event()
        real = learner_module._Background
        gate = self.event

        class Gated(real):
            def __init__(self, kind, work):
                super().__init__(kind, lambda: (gate.wait(), work())[1])
        monkeypatch.setattr(learner_module, "_Background", Gated)

    def open(self):
        self.event.set()


def test_learner_recalibrates_and_refits_in_the_background(tmp_path, backbones, frames,
                                                           monkeypatch):
    from edge_classifier.learning.learner import Learner
    from edge_classifier.learning.state import StateDir
    gate = _Gate(monkeypatch)
    with StateDir(tmp_path / "state") as state:
        learner = Learner(backbones(), state)
        for name, crops in frames.items():
            for crop in crops[:3]:
                learner.capture(name, crop)
        head = learner.head
        assert head.n_samples == 9 and head.calibration_stale  # used at once, calibrated later
        assert learner.predict(frames["cat"][3]).best == "cat"
        gate.open()
        learner.wait_background()
        assert learner.head is head and not head.calibration_stale

        gate.event.clear()
        learner.store.delete_class("food")  # the classes change: a refit in the background
        learner.changed()
        assert learner.head is head  # still answering while the refit waits
        learner.capture("cat", frames["cat"][3])  # taken in when the refit is swapped in
        gate.open()
        learner.wait_background()
        assert learner.head is not head and learner.head.classes == ["cat", "bird"]
        assert learner.head.n_samples == len(learner.store) == 7
        learner.store.remove_sample("bird", learner.store.sample_ids("bird")[0])
        learner.changed()  # one removal: downdated at once
        assert learner.head.n_samples == 6
        learner.wait_background()
        learner.save()
    monkeypatch.setattr(AutoHead, "_fit_merged", lambda *a, **k: pytest.fail("refitted"))
    with StateDir(tmp_path / "state") as state:
        again = Learner(backbones(), state)
        assert again.problems == [] and again.head.n_samples == 6
        assert again.predict(frames["bird"][3]).best == "bird"


def test_many_samples_arriving_at_once_are_refitted_off_the_loop_one_refit_at_a_time(
        tmp_path, backbones, frames, monkeypatch):
    """A fleet newcomer receives thousands of samples in batches: each batch used to be added
    to the head one by one on the loop thread (the device saw no frame for tens of seconds),
    and every change during a refit started another refit thread."""
    from edge_classifier.learning import learner as learner_module
    from edge_classifier.learning.learner import INLINE_CHANGES, Learner
    from edge_classifier.learning.state import StateDir
    gate = _Gate(monkeypatch)
    started = []
    gated = learner_module._Background

    class Counted(gated):
        def __init__(self, kind, work):
            started.append(kind)
            super().__init__(kind, work)
    monkeypatch.setattr(learner_module, "_Background", Counted)
    rng = np.random.default_rng(0)
    with StateDir(tmp_path / "state") as state:
        learner = Learner(backbones(), state)
        for name, crops in frames.items():
            learner.capture(name, crops[0])
        gate.open()
        learner.wait_background()
        gate.event.clear()
        head, before = learner.head, learner.head.n_samples
        base = learner.store.views("cat", learner.store.sample_ids("cat")[0])

        def arrive(n):
            for _ in range(n):
                noisy = base * (1 + 0.01 * rng.standard_normal(base.shape)).astype(np.float32)
                learner.store.add_sample("cat", noisy)
            learner.changed()
        started.clear()
        arrive(INLINE_CHANGES + 6)
        assert learner.head is head and head.n_samples == before  # nothing added in this thread
        assert started == ["refit"]
        arrive(INLINE_CHANGES + 6)  # more while the refit runs: no second refit thread
        assert started == ["refit"] and learner.head is head
        gate.open()
        learner.wait_background()  # the refit lacks the second batch: installed, refitted again
        assert started[:2] == ["refit", "refit"]
        assert learner.head.n_samples == len(learner.store) == before + 2 * (INLINE_CHANGES + 6)


def test_the_store_keeps_quantised_views_compact_and_exact(backbones, sample):
    from PIL import Image
    from edge_classifier.learning.compact import CompactViews, compact
    backbone = backbones()
    frame = np.asarray(Image.open(sample("cat.bmp")).convert("RGB"))
    views = np.stack([backbone.embed(frame), backbone.embed(frame[:, ::-1])])
    packed = compact(views)
    assert isinstance(packed, CompactViews) and packed.index.dtype == np.uint8
    assert packed.index.nbytes + packed.values.nbytes < views.nbytes / 2.5
    np.testing.assert_array_equal(packed.expand(), views)  # bit for bit
    floats = np.random.default_rng(0).normal(size=(2, 1024)).astype(np.float32)
    assert compact(floats) is floats  # not quantised: kept as it is


def test_a_saved_head_older_than_the_samples_is_refitted(tmp_path, backbones, frames):
    from edge_classifier.learning.learner import Learner
    from edge_classifier.learning.state import StateDir
    with StateDir(tmp_path / "state") as state:
        learner = Learner(backbones(), state)
        for name in ("cat", "bird"):
            for crop in frames[name][:2]:
                learner.capture(name, crop)
        learner.wait_background()
        learner.save()
        views = np.stack([backbones().embed(frames["food"][0])] * 2)
        learner.store.add_sample("food", views)  # behind the saved head's back
    with StateDir(tmp_path / "state") as state:
        again = Learner(backbones(), state)
        assert again.head.n_samples == 5 and "food" in again.head.classes


def test_unknown_scores_stay_finite_when_every_landmark_sample_is_gone():
    """Regression: a held button's near-copies are no landmarks; dropping the oldest samples
    (the landmarks) left no live landmark and NaN unknown scores until the next refit."""
    Xtr, ytr, Xte, _, _ = _task(9, n=3)
    head = make_head("auto").fit(Xtr, ytr, NAMES)
    for i in range(ytr.size):  # exact copies: stored, but never landmarks
        head.add(Xtr[i], int(ytr[i]))
    head.remove_many(list(range(ytr.size)))  # the originals, i.e. every landmark's sample
    assert head.n_orphans == head.n_landmarks
    with np.errstate(all="raise"):
        assert np.all(np.isfinite(head.unknown_score(Xte)))


def test_fit_rows_is_fit_on_the_stacked_matrix_bit_for_bit():
    from edge_classifier.learning.compact import ViewRows, compact
    Xtr, ytr, _, _, _ = _task(7, n=80)  # 320 samples, beyond a budget of 100 landmarks
    rng = np.random.default_rng(7)
    q = np.round(np.abs(Xtr) / 0.02) * 0.02  # quantised, as a backbone's: compact form
    views = np.stack([q, q[:, ::-1]], axis=1).astype(np.float32)
    items = [compact(v) for v in views]
    items[5] = np.concatenate([views[5], rng.random((1, views.shape[2]), np.float32)])  # 3 views
    rows = ViewRows(items)
    assert rows.shape == (320, 2, 32)  # cut to the fewest views, as samples_matrix cuts
    np.testing.assert_array_equal(rows.take(np.array([5, 0])), views[[5, 0]])
    a = make_head("auto", landmarks=100).fit(views[:, 0], ytr, NAMES, views=views[:, 1:])
    b = make_head("auto", landmarks=100).fit_rows(rows, ytr, NAMES)
    (sa, ma), (sb, mb) = a.to_state(), b.to_state()
    # b's points are the store's samples (references): not saved, the same values
    assert mb.pop("points") == {"from": "store", "views": 2}
    assert sa.keys() - sb.keys() == {"points"} and ma == mb
    for key in sb:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    np.testing.assert_array_equal(b._pts.take(slice(None)), sa["points"].astype(np.float32))
    assert b._pts.items() == rows.items and b._pts.nbytes == 8 * 320  # no copy of a sample
    with pytest.raises(Exception, match="no samples"):
        make_head("auto").fit_rows(ViewRows([]), [], NAMES)


def test_the_learner_fits_and_refits_from_the_store_without_its_float32_matrix(
        tmp_path, backbones, frames, monkeypatch):
    """The store's samples_matrix is every sample as float32 (82 MB at 10,000), beside the head
    being built: the auto head is fitted from the store's compact rows instead, same head."""
    from edge_classifier.learning.learner import Learner
    from edge_classifier.learning.state import StateDir
    from edge_classifier.learning.store import SampleStore
    with StateDir(tmp_path / "state") as state:
        learner = Learner(backbones(), state)
        for name, crops in frames.items():
            for crop in crops:
                learner.capture(name, crop)
        views, y, names = learner.store.samples_matrix()
        expected = make_head("auto").fit(views[:, 0], y, names, views=views[:, 1:])
        monkeypatch.setattr(SampleStore, "samples_matrix",
                            lambda self: pytest.fail("the whole float32 matrix was built"))
        learner.fit()
        np.testing.assert_array_equal(learner.head.to_state()[0]["P"], expected.to_state()[0]["P"])
        learner.store.delete_class("food")
        learner.changed()  # a refit in the background, from the store's rows
        learner.wait_background()
        assert learner.head.classes == ["cat", "bird"] and learner.head.n_samples == 8


def test_leave_one_out_beyond_the_budget_equals_refitting_without_the_sample_or_its_group():
    """The calibration's held-out scores (float32 above 512 samples) against a direct refit of
    the same landmark system without each checked sample (or its whole capture group)."""
    from edge_classifier.learning.heads.autocal import point_features
    Xtr, ytr, _, _, _ = _task(8, n=150)  # 600 samples: the float32 path
    X = np.abs(Xtr).astype(np.float32)
    X[[7, 13, 31]] = X[[6, 12, 30]]  # capture groups of two (6, 12 and 30 are landmarks)
    head = make_head("auto", landmarks=100).fit(X, ytr, NAMES)
    n, C = ytr.size, len(NAMES)
    Phi = point_features(head._geometry(), np.arange(n))[0]
    Tc = np.eye(C)[ytr] - np.bincount(ytr, minlength=C) / n
    groups = head.capture_groups
    assert groups[6] == groups[7] and groups[12] == groups[13] and groups[30] == groups[31]
    checked = 0
    for i in [0, 5, 7, 12, 99, 300, 598]:
        out = np.flatnonzero(groups == groups[i])
        keep = np.setdiff1d(np.arange(n), out)
        A = Phi[keep].T @ Phi[keep] + head.lam * np.eye(Phi.shape[1])
        direct = Phi[out] @ np.linalg.solve(A, Phi[keep].T @ Tc[keep])
        np.testing.assert_allclose(head._loo[out], direct, atol=2e-3, err_msg=f"sample {i}")
        checked += out.size
    assert checked >= 9


def test_the_store_shares_one_table_of_values_among_a_quantised_backbones_samples(backbones,
                                                                                  sample):
    from PIL import Image
    from edge_classifier.learning.compact import CompactViews, Compactor, expand
    backbone = backbones()
    compactor = Compactor()
    packed, originals = [], []
    for photo in ("cat.bmp", "parrot.jpg", "hot_dog.jpg", "bird.bmp"):
        frame = np.asarray(Image.open(sample(photo)).convert("RGB"))
        views = np.stack([backbone.embed(frame), backbone.embed(frame[:, ::-1])])
        originals.append(views)
        packed.append(compactor(views))
    assert all(isinstance(p, CompactViews) for p in packed)
    assert all(p.values is packed[0].values for p in packed)  # one table, the first's too
    for p, v in zip(packed, originals):
        np.testing.assert_array_equal(expand(p), v)  # bit for bit
    rng = np.random.default_rng(0)
    floats = rng.normal(size=(2, 1024)).astype(np.float32)
    assert compactor(floats) is floats  # a float model's outputs: kept as they are
    near = originals[0].copy()
    near[0, 3] = np.nextafter(near[0, 3], np.float32(10))  # one value off the levels
    off = compactor(near)
    assert off.values is not packed[1].values
    np.testing.assert_array_equal(expand(off), near)
    signed = Compactor()  # levels with a zero point: negative values too
    q = (np.arange(-40, 40, dtype=np.float32) * np.float32(0.05)).reshape(2, 40)
    a, b = signed(q), signed(q[:, ::-1].copy())
    assert a.values is b.values is signed(q.copy()).values and b.values.size == 256
    np.testing.assert_array_equal(expand(b), q[:, ::-1])


def test_beyond_its_held_out_budget_the_calibration_scores_an_even_spread_of_samples(
        monkeypatch):
    """Pass 2 scores HELD_OUT_ROWS samples that are no landmark, evenly spread, each with its
    whole capture group; their held-out scores are those of scoring every sample, the rest are
    left out of the calibration (not NaN in it), and ``loo_proba`` still scores every sample."""
    Xtr, ytr, _, _, _ = _task(9, n=150)  # 600 samples, 100 landmarks: 500 that are none
    X = np.abs(Xtr).astype(np.float32)
    monkeypatch.setattr(autocal, "HELD_OUT_ROWS", 50)
    probe = make_head("auto", landmarks=100).fit(X, ytr, NAMES)
    honest = np.flatnonzero(probe._land < 0)
    spread = honest[np.unique(np.linspace(0, honest.size - 1, 50).round().astype(int))]
    landmark = int(probe._owner[3])
    p, q = int(spread[5]), int(next(i for i in honest if i not in spread and i > spread[5]))
    X[[p, q]] = X[landmark]  # one capture group: a scored sample, a landmark and one more
    head = make_head("auto", landmarks=100).fit(X, ytr, NAMES)
    assert head._owner[3] == landmark and head.capture_groups[q] == head.capture_groups[p]

    snap = dict(head._snapshot(), temperature=3 * head.default_temperature)  # another start
    part, every = autocal.calibrate(snap), autocal.calibrate(snap, every=True)
    rows = autocal.held_out_rows(head._land, head.capture_groups)
    assert not part["every"] and every["every"] and 50 <= rows.size < 100
    assert {p, q, landmark} <= set(rows.tolist()) and q not in spread  # the whole group
    groups = head.capture_groups
    inside = np.isin(groups, groups[rows])
    assert np.array_equal(np.flatnonzero(inside), rows)  # every group scored whole, or not
    picked = np.unique(groups[rows]).size  # groups evenly, not samples: none favoured by size
    assert picked == int(np.ceil(50 * np.unique(groups[head._land < 0]).size /
                                 np.bincount(groups)[np.unique(groups[head._land < 0])].sum()))
    scored = np.zeros(ytr.size, bool)
    scored[rows] = True
    np.testing.assert_allclose(part["loo"][scored], every["loo"][scored], atol=1e-5)  # float32
    assert np.isnan(part["loo"][~scored]).all() and not np.isnan(every["loo"]).any()
    assert np.isfinite(part["temperature"]) and np.isfinite(part["open"]["threshold"])
    assert part["temperature"] == pytest.approx(head.temperature, rel=1e-5)  # its optimum
    assert part["temperature"] == pytest.approx(every["temperature"], rel=0.2)
    assert part["temperature"] != every["temperature"]  # fitted on the spread alone

    assert head._loo is None  # not kept: only some samples were scored
    job = head.loo_proba_job()  # (for another thread): the same, kept for this version only
    np.testing.assert_allclose(job(), head.loo_proba(), atol=1e-12)
    head._loo = None
    np.testing.assert_array_equal(head.loo_proba_job()(), job())
    P = head.loo_proba()
    assert not np.isnan(P).any() and np.allclose(P.sum(axis=1), 1.0)
    assert head._loo is not None and np.array_equal(head.loo_proba(), P)  # kept until an edit
    head.add(X[0], 1)
    assert head._loo is None and head.loo_proba_job()().shape == (ytr.size + 1, len(NAMES))
    head.add_class("c4")  # scores kept for 4 classes are not taken for 5
    assert head.loo_proba_job()().shape == (ytr.size + 1, len(NAMES) + 1)
    assert head.loo_proba().shape == (ytr.size + 1, len(NAMES) + 1)


def test_a_capture_group_too_big_for_its_block_is_left_out_in_the_landmarks_system(
        monkeypatch):
    """One still scene captured many times over is one capture group. Beyond BLOCK_MAX its
    leave-group-out runs in the m x m system (its g x g block was 800 MB for 10,000 captures):
    the same scores (closer to a refit without the group than the block's, which lost
    precision here: 0.06 off); and its groups are those of every sample-landmark pair (from
    fewer edges)."""
    from edge_classifier.learning.heads.autocal import _points, point_features
    from edge_classifier.learning.heads.neighbours import DUPLICATE_DISTANCE
    from edge_classifier.learning.heads.nystrom import connected_labels
    Xtr, ytr, _, _, _ = _task(10, n=150)  # 600 samples
    X = np.abs(Xtr).astype(np.float32)
    rng = np.random.default_rng(3)
    scene = np.flatnonzero(ytr == 0)[:130]  # class 0 keeps samples outside the scene's group
    X[scene] = X[scene[0]] * (1 + 0.03 * rng.standard_normal((scene.size, X.shape[1])))
    block = make_head("auto", landmarks=200).fit(X, ytr, NAMES)
    groups = block.capture_groups
    assert np.bincount(groups).max() >= 120 > 0.5 * np.isin(groups, groups[scene[0]]).sum()

    monkeypatch.setattr(autocal, "BLOCK_MAX", 40)
    in_m = make_head("auto", landmarks=200).fit(X, ytr, NAMES)
    np.testing.assert_array_equal(in_m.capture_groups, groups)
    out = np.flatnonzero(groups == np.bincount(groups).argmax())
    np.testing.assert_array_equal(np.delete(in_m._loo, out, 0), np.delete(block._loo, out, 0))
    n, C = ytr.size, len(NAMES)  # the group's scores against a refit without it
    Phi = point_features(in_m._geometry(), np.arange(n))[0]
    Tc = np.eye(C)[ytr] - np.bincount(ytr, minlength=C) / n
    keep = np.setdiff1d(np.arange(n), out)
    A = Phi[keep].T @ Phi[keep] + in_m.lam * np.eye(Phi.shape[1])
    direct = Phi[out] @ np.linalg.solve(A, Phi[keep].T @ Tc[keep])
    np.testing.assert_allclose(in_m._loo[out], direct, atol=5e-3)  # (float32 features)
    assert np.isfinite(in_m.temperature) and np.isfinite(in_m.unknown_threshold)
    solve, m_ = np.linalg.solve, in_m.n_landmarks
    calls = []

    def singular(a, b):  # as if rounding had made the system without the group singular
        if a.shape == (m_, m_):
            calls.append(a.shape)
            raise np.linalg.LinAlgError("singular matrix")
        return solve(a, b)
    monkeypatch.setattr(np.linalg, "solve", singular)
    fallback = make_head("auto", landmarks=200).fit(X, ytr, NAMES)
    np.testing.assert_allclose(fallback._loo, in_m._loo, atol=1e-6)  # least squares instead
    assert calls  # (the path was taken)
    monkeypatch.setattr(np.linalg, "solve", solve)

    snap = in_m._snapshot()
    S = _points(snap, np.arange(n)) @ snap["L"].T
    r, c = np.nonzero(S > 1.0 - DUPLICATE_DISTANCE)
    m = snap["L"].shape[0]
    node = np.where(snap["owner"] >= 0, snap["owner"], n + np.arange(m))
    assert r.size > 2000  # every pair: the scene's samples to each of its landmarks
    np.testing.assert_array_equal(connected_labels(n + m, r, node[c])[:n], groups)


def test_the_held_out_spread_takes_groups_evenly_not_in_proportion_to_their_size(monkeypatch):
    """Twenty bursts of ten captures of one scene each, among 400 single samples: picking
    samples evenly would take every burst whole (about 4 times the rows asked for, a third of
    them bursts); picking groups evenly takes about as many rows as asked, in the data's mix."""
    Xtr, ytr, _, _, _ = _task(11, n=150)  # 600 samples
    X = np.abs(Xtr).astype(np.float32)
    rng = np.random.default_rng(4)
    for g in range(20):
        burst = 200 + 10 * g + np.arange(10)
        X[burst] = X[burst[0]] * (1 + 0.003 * rng.standard_normal((10, X.shape[1])))
        ytr[burst] = ytr[burst[0]]
    monkeypatch.setattr(autocal, "HELD_OUT_ROWS", 60)
    head = make_head("auto", landmarks=100).fit(X, ytr, NAMES)
    groups = head.capture_groups
    assert (np.bincount(groups) >= 8).sum() == 20  # the bursts are groups
    rows = autocal.held_out_rows(head._land, groups)
    assert 40 <= rows.size <= 90
    assert np.isin(groups[rows], np.flatnonzero(np.bincount(groups) >= 8)).sum() <= 30
