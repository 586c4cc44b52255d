"""The ``auto`` head reads its stored points from the store's samples (heads/points.py): no copy
of its own, none in head.npz, handed back on load, and every edit as exact as with a copy."""

from __future__ import annotations

import numpy as np
import pytest

from edge_classifier.errors import StateError
from edge_classifier.learning.compact import Compactor, ViewRows
from edge_classifier.learning.heads import AutoHead, load_head, make_head
from edge_classifier.learning.heads.synthetic import make_task

NAMES = ["c0", "c1", "c2", "c3"]


def _views(seed=3, n=60):
    """4 x n samples of two quantised views (as a backbone gives), labels, and a test set."""
    Xtr, ytr, Xte, _, _ = make_task(seed, n_classes=4, dim=32, n_train=n, n_test=20)
    q = (np.round(np.abs(Xtr) / 0.02) * np.float32(0.02)).astype(np.float32)
    views = np.stack([q, q[:, ::-1]], axis=1)
    return views, ytr, Xte


def _store_head(seed, landmarks=100, fitted=200, n=60):
    """(views, labels, test set, the samples in the store's form, a head fitted from the first
    ``fitted`` of them)."""
    views, y, Xte = _views(seed, n=n)
    pack = Compactor()
    items = [pack(v) for v in views]
    head = make_head("auto", landmarks=landmarks).fit_rows(ViewRows(items[:fitted]),
                                                           y[:fitted], NAMES)
    return views, y, Xte, items, head


def _state_of(head):
    arrays, meta = head.to_state()
    arrays.pop("points", None)
    meta.pop("points", None)
    return arrays, meta


def _assert_same_head(a, b, Xte):
    (sa, ma), (sb, mb) = _state_of(a), _state_of(b)
    assert sa.keys() == sb.keys() and ma == mb
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    np.testing.assert_array_equal(a.decision_function(Xte), b.decision_function(Xte))


@pytest.mark.parametrize("landmarks", [300, 100])  # every sample a landmark; beyond the budget
def test_edits_of_a_store_head_equal_those_of_a_head_with_its_own_copy(landmarks):
    views, y, Xte = _views()
    pack = Compactor()
    items = [pack(v) for v in views]
    own = make_head("auto", landmarks=landmarks).fit(views[:200, 0], y[:200], NAMES,
                                                     views=views[:200, 1:])
    store = make_head("auto", landmarks=landmarks).fit_rows(ViewRows(items[:200]), y[:200], NAMES)
    assert store.points_from_store and not own.points_from_store
    _assert_same_head(own, store, Xte)
    for i in range(200, 230):  # adds (landmarks while the budget lasts), removes, a refresh
        own.add(views[i, 0], int(y[i]), views=views[i, 1:])
        store.add(views[i, 0], int(y[i]), views=views[i, 1:], item=items[i])
        if i % 7 == 0:
            own.remove(i % 50)
            store.remove(i % 50)
    own.remove_many([0, 4, 9, 100])
    store.remove_many([0, 4, 9, 100])
    _assert_same_head(own, store, Xte)
    np.testing.assert_array_equal(own.loo_proba(), store.loo_proba())
    own.refresh()
    store.refresh()
    _assert_same_head(own, store, Xte)
    assert store.remove_sample(views[150, 0], int(y[150]), views=views[150, 1:]) == \
        own.remove_sample(views[150, 0], int(y[150]), views=views[150, 1:])
    _assert_same_head(own, store, Xte)


def test_a_saved_store_head_holds_no_points_and_edits_exactly_once_they_are_handed_back():
    views, y, Xte, items, head = _store_head(5)
    arrays, meta = head.to_state()
    assert "points" not in arrays and meta["points"] == {"from": "store", "views": 2}
    loaded = load_head(arrays, meta)
    np.testing.assert_array_equal(loaded.predict_proba(Xte), head.predict_proba(Xte))
    with pytest.raises(StateError, match="not handed back"):
        loaded.remove(3)  # a removal needs the sample's point
    with pytest.raises(StateError, match="not handed back"):
        loaded.calibration_job()
    assert loaded.n_samples == 200  # nothing changed by the refused edits
    np.testing.assert_array_equal(loaded.predict_proba(Xte), head.predict_proba(Xte))
    assert not loaded.points_match()  # nothing handed back yet
    loaded.attach_points(list(items[:200]))
    assert loaded.points_match()
    for h in (head, loaded):
        h.add(views[200, 0], int(y[200]), views=views[200, 1:], item=items[200])
        h.remove_many([1, 2, 150])
        h.refresh()
    _assert_same_head(head, loaded, Xte)


def test_handed_back_samples_that_are_not_the_heads_are_told_apart():
    views, y, _, items, head = _store_head(6)
    arrays, meta = head.to_state()
    for wrong in (items[:199], items[1:201], items[:200][::-1],
                  [items[100]] + items[1:200]):  # short, shifted, reordered, one swapped
        loaded = load_head(arrays, meta)
        loaded.attach_points(list(wrong))
        assert not loaded.points_match()
    loaded = load_head(arrays, meta)
    loaded.attach_points(lambda: items[:150])  # a lazy source giving the wrong number
    with pytest.raises(StateError, match="150 samples for a head of 200"):
        loaded.calibration_job()


@pytest.mark.parametrize("source", ["store", {"from": "disk", "views": 2},
                                    {"from": "store", "views": 0},
                                    {"from": "store", "views": True},
                                    {"from": "store", "views": "2"}])
def test_a_damaged_points_source_is_a_state_error(source):
    views, y, _ = _views(7, n=20)
    items = [Compactor()(v) for v in views]
    arrays, meta = make_head("auto").fit_rows(ViewRows(items), y, NAMES).to_state()
    meta["points"] = source
    with pytest.raises(StateError, match="points source"):
        load_head(arrays, meta)


def test_a_calibration_snapshot_of_a_store_head_is_untouched_by_later_edits():
    views, y, Xte, items, head = _store_head(8)
    for i in range(200, 205):
        head.add(views[i, 0], int(y[i]), views=views[i, 1:], item=items[i])
    arrays, meta = head.to_state()
    twin = load_head(arrays, meta)
    twin.attach_points(list(head._pts.items()))
    job = head.calibration_job()
    for i in range(205, 235):  # the loop edits while the job waits for its thread
        head.add(views[i, 0], int(y[i]), views=views[i, 1:], item=items[i])
    head.remove_many(list(range(0, 60, 3)))
    result, expect = job(), twin.calibration_job()()
    for key in ("loo", "groups"):
        np.testing.assert_array_equal(result[key], expect[key])
    for a, b in zip(result["system"], expect["system"]):
        np.testing.assert_array_equal(a, b)
    assert result["temperature"] == expect["temperature"] and result["open"] == expect["open"]
    assert not head.apply_calibration(result)  # the head changed meanwhile: still stale


def test_a_store_head_takes_what_add_is_given_when_no_item_comes_and_a_sample_with_fewer_views():
    views, y, Xte = _views(9, n=30)
    items = [Compactor()(v) for v in views]
    a = make_head("auto", landmarks=50).fit_rows(ViewRows(items[:100]), y[:100], NAMES)
    b = make_head("auto", landmarks=50).fit_rows(ViewRows(items[:100]), y[:100], NAMES)
    own = make_head("auto", landmarks=50).fit(views[:100, 0], y[:100], NAMES,
                                             views=views[:100, 1:])
    a.add(views[100, 0], int(y[100]), views=views[100, 1:], item=items[100])
    b.add(views[100, 0], int(y[100]), views=views[100, 1:])  # its own stacked copy
    own.add(views[100, 0], int(y[100]), views=views[100, 1:])
    # a capture taken with fewer views (augmentation turned off since the fit): its point is
    # what it has, as a head with its own copy takes it, and so it is removed again exactly
    one = Compactor()(views[101, :1])
    a.add(views[101, 0], int(y[101]), item=one)
    b.add(views[101, 0], int(y[101]))
    own.add(views[101, 0], int(y[101]))
    for h in (a, b):
        _assert_same_head(own, h, Xte)
    for h in (a, b, own):
        h.remove(101)
        h.refresh()
    for h in (a, b):
        _assert_same_head(own, h, Xte)

def test_the_learner_hands_the_store_back_on_load_and_refits_when_a_sample_was_swapped(
        tmp_path, backbones, frames, monkeypatch):
    from edge_classifier.learning.learner import Learner
    from edge_classifier.learning.state import StateDir
    with StateDir(tmp_path / "state") as state:
        learner = Learner(backbones(), state)
        for name, crops in frames.items():
            for crop in crops[:3]:
                learner.capture(name, crop)
        learner.fit()  # from the store's rows: the head refers to the store's samples
        assert learner.head.points_from_store
        learner.save()
        saved = learner.head.predict_proba(backbones().embed(frames["cat"][3])[None])
    arrays = np.load(tmp_path / "state" / "head.npz")
    assert "points" not in arrays.files
    fitted = []
    real = AutoHead._fit_merged
    monkeypatch.setattr(AutoHead, "_fit_merged", lambda *a: fitted.append(1) or real(*a))
    with StateDir(tmp_path / "state") as state:
        again = Learner(backbones(), state)
        assert again.problems == [] and fitted == [] and again.head.points_match()
        np.testing.assert_array_equal(
            again.head.predict_proba(backbones().embed(frames["cat"][3])[None]), saved)
        again.capture("bird", frames["bird"][3])  # an add, then a removal, on the loaded head
        again.store.remove_sample("cat", again.store.sample_ids("cat")[0])
        again.changed()  # downdated at once (a landmark's sample gone: refit in the background)
        assert again.head.n_samples == 9
        again.wait_background()
        again.save()
    fitted.clear()
    with StateDir(tmp_path / "state", write=False) as state:  # read-only: nothing read
        import edge_classifier.learning.store_disk as store_disk
        monkeypatch.setattr(store_disk, "read_sample", lambda *a: pytest.fail("read a sample"))
        ro = Learner(backbones(), state)
        assert ro.head.n_samples == 9 and fitted == []
        assert ro.predict(frames["bird"][3]).best == "bird"
    monkeypatch.undo()
    # one landmark's sample file replaced by another sample's, behind the head's back
    files = sorted((tmp_path / "state" / "samples").rglob("*.npy"))
    first = [f for f in files if f.parent == files[0].parent]
    contents = [f.read_bytes() for f in first]
    for f, data in zip(first, contents[1:] + contents[:1]):  # a class's samples rotated
        f.write_bytes(data)
    with StateDir(tmp_path / "state") as state:
        fixed = Learner(backbones(), state)
        assert any("does not match the stored samples" in p for p in fixed.problems)
        assert fixed.head.n_samples == 9 and fixed.head.points_match()
    assert sorted((tmp_path / "state" / "samples").rglob("*.npy")) == files  # nothing deleted


def test_float16_values_round_exactly_as_numpys_float16_conversion():
    from edge_classifier.learning.heads.points import float16_values
    rng = np.random.default_rng(0)
    halves = np.arange(0, 0x7BFF, dtype=np.uint16).view(np.float16).astype(np.float32)
    ties = ((halves[:-1].astype(np.float64) + halves[1:]) / 2).astype(np.float32)  # exact ties
    cases = [rng.random(1 << 16, dtype=np.float32), ties, -ties,
             np.nextafter(ties, np.float32(1)), np.nextafter(ties, np.float32(0)),
             rng.integers(0, 0x477FE000, 1 << 16, dtype=np.uint32).view(np.float32),  # any bits
             np.array([0.0, -0.0, 2 ** -14, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 65504.0,
                       65519.0, 65520.0, 1e9, np.inf, -np.inf], np.float32)]
    for Z in cases:
        with np.errstate(over="ignore"):
            expect = Z.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(float16_values(Z).view(np.uint32), expect.view(np.uint32))
    Z = np.array([0.25, np.nan], np.float32)
    assert np.isnan(float16_values(Z)[1]) and float16_values(Z)[0] == 0.25
    assert float16_values(np.zeros((0, 4), np.float32)).shape == (0, 4)


@pytest.mark.parametrize("power", [0.5, 0.75, 1.0, 0.6])
@pytest.mark.parametrize("views", [1, 2, 3])
def test_points_from_a_shared_table_of_levels_equal_merge_views_bit_for_bit(power, views):
    from edge_classifier.learning.heads.points import _merged, _merged_on_levels, merged_points
    rng = np.random.default_rng(views)
    step = np.float32(0.0235)
    pack = Compactor()
    k = rng.integers(0, 256, (300, 3, 64)) * (rng.random((300, 1, 64)) < 0.7)
    k[0, 0, :2] = 1, 255  # the first sample shows the step (the levels are learnt from it)
    items = [pack(v.astype(np.float32) * step) for v in k]
    items.append(pack(np.zeros((3, 64), np.float32)))  # a zero sample stays zero
    assert all(it.values is items[0].values for it in items)  # the first one too
    fast = _merged_on_levels(items, views, power, 64)
    assert (fast is None) == (power == 0.6)  # only where the power is taken value by value
    if fast is not None:
        np.testing.assert_array_equal(fast, _merged(items, views, power, 64))
    mixed = items[:5] + [np.vstack([items[5].expand(), items[6].expand()])]  # off the table
    assert _merged_on_levels(mixed, views, power, 64) is None
    np.testing.assert_array_equal(merged_points(mixed, views, power, 64),
                                  _merged(mixed, views, power, 64).astype(np.float16)
                                  .astype(np.float32))


def test_a_factor_computed_in_float32_is_kept_float32_through_edits_saves_and_loads():
    """Above 512 landmarks ``Linv`` is computed in float32: kept so (4 MB less at 1,024), it is
    multiplied in float32 with no float64 copy, and the edits stay exact to float32 rounding."""
    views, y, Xte = _views(10, n=175)  # 700 samples, 600 landmarks
    items = [Compactor()(v) for v in views]
    head = make_head("auto", landmarks=600).fit_rows(ViewRows(items[:650]), y[:650], NAMES)
    assert head.n_landmarks > 512 and head._Linv.dtype == np.float32
    before = head.decision_function(Xte)
    start = head.to_state()[0]
    for i in range(650, 660):  # no room left for landmarks: rank-one updates in float32 factors
        head.add(views[i, 0], int(y[i]), views=views[i, 1:], item=items[i])
    import tracemalloc
    tracemalloc.start()
    head.remove(655)  # no float64 copy of the factor (1.4 MB here) for an edit
    head.add(views[655, 0], int(y[655]), views=views[655, 1:], item=items[655])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 600 * 600 * 8 / 2, peak
    head.remove_many(list(range(650, 660)))
    np.testing.assert_allclose(head.decision_function(Xte), before, rtol=0, atol=1e-3)  # (as float64)
    head.refresh()  # the same samples: the calibration's system, bit for bit as the fit's
    for key in ("P", "b", "s", "L", "Linv"):
        np.testing.assert_array_equal(head.to_state()[0][key], start[key], err_msg=key)
    arrays, meta = head.to_state()
    assert arrays["Linv"].dtype == np.float32
    loaded = load_head(arrays, meta)
    loaded.attach_points(list(head._pts.items()))
    assert loaded._Linv.dtype == np.float32 and loaded.points_match()
    np.testing.assert_array_equal(loaded.decision_function(Xte), head.decision_function(Xte))
    for h in (head, loaded):
        h.remove(3)
        h.add(views[699, 0], int(y[699]), views=views[699, 1:], item=items[699])
    np.testing.assert_array_equal(loaded.decision_function(Xte), head.decision_function(Xte))
    small = make_head("auto", landmarks=100).fit_rows(ViewRows(items[:300]), y[:300], NAMES)
    assert small._Linv.dtype == np.float64  # computed in float64 below 512: kept so


def test_a_read_only_command_on_a_head_saved_uncalibrated_reads_no_sample(
        tmp_path, backbones, frames, monkeypatch):
    """A device saves its head while a recalibration is still due (calibration_stale): a
    read-only ``predict`` on it uses the saved calibration and reads no sample for another."""
    from edge_classifier.learning.learner import Learner
    from edge_classifier.learning.state import StateDir
    import edge_classifier.learning.store_disk as store_disk
    with StateDir(tmp_path / "state") as state:
        learner = Learner(backbones(), state)
        for name, crops in frames.items():
            for crop in crops[:3]:
                learner.capture(name, crop)
        learner.wait_background()
        learner.fit()
        learner.capture("cat", frames["cat"][3])  # calibrated later: saved before that
        assert learner.head.calibration_stale and learner.head.points_from_store
        learner.save()
    with StateDir(tmp_path / "state", write=False) as state:
        monkeypatch.setattr(store_disk, "read_sample", lambda *a: pytest.fail("read a sample"))
        ro = Learner(backbones(), state)
        assert ro.head.calibration_stale and ro._job is None
        assert ro.predict(frames["bird"][3]).best == "bird"
    monkeypatch.undo()
    with StateDir(tmp_path / "state") as state:  # the owner recalibrates it
        owner = Learner(backbones(), state)
        owner.wait_background()
        owner.poll()
        assert not owner.head.calibration_stale


def _learner(state, backbones, **kw):
    from edge_classifier.learning.learner import Learner
    return Learner(backbones(), state, **kw)


def test_captures_of_interleaved_classes_reload_in_the_heads_order_without_a_refit(
        tmp_path, backbones, frames, monkeypatch):
    """The head holds samples in capture order, the store class by class: the order is saved
    with the head, so a reload neither refits nor pairs a sample with another's point."""
    from edge_classifier.learning.state import StateDir
    with StateDir(tmp_path / "state") as state:
        learner = _learner(state, backbones)
        for i in range(3):
            for name in ("cat", "bird", "food"):  # interleaved, as a user teaches
                learner.capture(name, frames[name][i])
        learner.wait_background()
        learner.fit()  # a store head
        for name in ("bird", "cat", "food", "cat"):
            learner.capture(name, frames[name][3])
        rows = list(learner._rows)
        assert rows != learner._store_rows()  # the head's order is not the store's
        learner.save()  # its calibration still due, as run saves on its way out
        probe = backbones().embed(frames["food"][3])[None]
        expect = learner.head.predict_proba(probe)
    fitted = []
    real = AutoHead._fit_merged
    monkeypatch.setattr(AutoHead, "_fit_merged", lambda *a: fitted.append(1) or real(*a))
    with StateDir(tmp_path / "state") as state:
        again = _learner(state, backbones)
        assert again.problems == [] and fitted == [] and again._rows == rows
        np.testing.assert_array_equal(again.head.predict_proba(probe), expect)
        gone = rows[-2]  # a removal takes out exactly that sample's point
        again.store.remove_sample("food", gone)
        again.changed()
        assert gone not in again._rows and again.head.n_samples == len(rows) - 1
        again.wait_background()
        again.poll()
        fresh = make_head("auto").fit_rows(*again.store.sample_rows())
        np.testing.assert_allclose(again.head.predict_proba(probe), fresh.predict_proba(probe),
                                   atol=1e-9)


def test_a_capture_with_fewer_views_than_the_state_is_taken_in_and_kept_after_a_reload(
        tmp_path, backbones, frames):
    """Augmentation turned off on a state taught with it: the capture has one view, the
    head two per sample; it is taken in at once, and the reload matches."""
    from edge_classifier.learning.augment import Augmentation
    from edge_classifier.learning.state import StateDir
    with StateDir(tmp_path / "state") as state:
        learner = _learner(state, backbones, augmentation=Augmentation(flip=True))
        for name in ("cat", "bird"):
            for crop in frames[name][:3]:
                learner.capture(name, crop)
        learner.fit()
        learner.save()
    with StateDir(tmp_path / "state") as state:
        plain = _learner(state, backbones, augmentation=Augmentation(flip=False))
        assert plain.problems == []
        for crop in frames["bird"][3:] + frames["cat"][3:]:
            plain.capture("bird" if crop is frames["bird"][3] else "cat", crop)
        assert plain.head.n_samples == len(plain.store) == 8 and plain.problems == []
        plain.wait_background()
        plain.save()
        probe = backbones().embed(frames["bird"][3])[None]
        expect = plain.head.predict_proba(probe)
    with StateDir(tmp_path / "state", write=False) as state:
        ro = _learner(state, backbones)
        assert ro.problems == [] and ro.head.n_samples == 8
        np.testing.assert_array_equal(ro.head.predict_proba(probe), expect)


def test_a_sample_file_rewritten_behind_the_heads_back_is_caught_even_if_no_landmark(
        tmp_path, backbones, frames):
    """A copy of a frame is no landmark, so the landmark check cannot see it; the checksums
    saved with the head do, and the head is refitted rather than subtracting a wrong point."""
    from edge_classifier.learning.state import StateDir
    with StateDir(tmp_path / "state") as state:
        learner = _learner(state, backbones)
        for name in ("cat", "bird"):
            for crop in frames[name][:3]:
                learner.capture(name, crop)
        learner.capture("cat", frames["cat"][0])  # an exact copy: no landmark
        learner.fit()
        learner.wait_background()
        head = learner.head
        copy_index = int(np.flatnonzero(head._land < 0)[0])
        copy_id = learner._rows[copy_index]
        learner.save()
    files = {p.stem: p for p in (tmp_path / "state" / "samples").rglob("*.npy")}
    mine = files[copy_id].read_bytes()  # (its twin, the frame it copies, has the same content)
    other = next(p for stem, p in sorted(files.items()) if p.parent == files[copy_id].parent
                 and p.read_bytes() != mine)
    files[copy_id].write_bytes(other.read_bytes())  # valid, the same id, another content
    with StateDir(tmp_path / "state") as state:
        again = _learner(state, backbones)
        assert any("does not match the stored samples" in p for p in again.problems)
        assert again.head.n_samples == 7
        again.save()
    assert {p.stem for p in (tmp_path / "state" / "samples").rglob("*.npy")} == set(files)
    # a head without its checksums (removed, or saved without them) cannot be checked: refitted
    from edge_classifier.learning.learner import SAMPLE_CRC
    head_file = tmp_path / "state" / "head.npz"
    with np.load(head_file) as saved:
        arrays = {k: saved[k] for k in saved.files if k != SAMPLE_CRC}
    with StateDir(tmp_path / "state") as state:
        meta = state.load_head_files()[1]
        state.save_head(arrays, meta)
    with StateDir(tmp_path / "state") as state:
        again = _learner(state, backbones)
        assert any("does not match the stored samples" in p for p in again.problems)
        again.save()
    with StateDir(tmp_path / "state") as state:
        assert _learner(state, backbones).problems == []  # saved again with them


def test_a_save_writes_the_heads_own_arrays_without_copying_them(tmp_path):
    """The device's save writes the head's arrays at once from the arrays themselves (no copy
    of the head beside it, and none of each array inside the archive writer), and what it
    writes loads back as the head."""
    import tracemalloc
    from edge_classifier.learning.state import StateDir
    views, y, Xte, items, head = _store_head(11, landmarks=600, fitted=640, n=160)
    expect = {k: v.copy() for k, v in head.to_state()[0].items()}
    total = sum(v.nbytes for v in expect.values())
    with StateDir(tmp_path / "state") as state:
        tracemalloc.start()
        arrays, meta = head.to_state(copy=False)
        state.save_head(arrays, {"edge_classifier": {"head": "auto"}, "head_meta": meta})
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # (the file's CRC is read back in two 1 MiB chunks at most: the only fixed cost)
        assert total > 4e6 and peak < (1 << 21) + total / 8, (peak, total)
        assert np.shares_memory(arrays["L"], head._L)
        saved, saved_meta = state.load_head_files()
    for key, value in expect.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
        assert saved[key].dtype == value.dtype
    loaded = load_head(saved, saved_meta["head_meta"])
    np.testing.assert_array_equal(loaded.decision_function(Xte), head.decision_function(Xte))


def test_a_head_that_cannot_take_a_stored_sample_in_is_refitted_not_left_behind(
        tmp_path, backbones, frames, monkeypatch, caplog):
    """The sample is on disk before the head takes it in: if the head cannot, it is refitted
    from the store, so it never answers without a taught sample."""
    from edge_classifier.errors import InvalidEmbeddingError
    from edge_classifier.learning.state import StateDir
    with StateDir(tmp_path / "state") as state:
        learner = _learner(state, backbones)
        for name in ("cat", "bird"):
            for crop in frames[name][:2]:
                learner.capture(name, crop)
        real = AutoHead.add
        failures = []

        def add_once(self, *a, **k):
            if not failures:
                failures.append(1)
                raise InvalidEmbeddingError("an unexpected sample")
            return real(self, *a, **k)
        monkeypatch.setattr(AutoHead, "add", add_once)
        learner.capture("bird", frames["bird"][2])
        assert failures == [1] and "refitting" in caplog.text
        assert learner.head.n_samples == len(learner.store) == 5
        assert sorted(learner._rows) == sorted(learner._store_rows())
        learner.capture("cat", frames["cat"][2])  # and it goes on taking samples in
        assert learner.head.n_samples == len(learner.store) == 6


@pytest.mark.parametrize("landmarks", [300, 100])  # growing landmarks; beyond the budget
def test_a_frozen_state_is_left_alone_by_every_later_edit(landmarks):
    """What a save in another thread writes (``to_state(copy=False, frozen=True)``) is the head
    as it was when the save began, whatever the head learns meanwhile: adds (new landmarks
    while the budget lasts), enough rank-one edits to fold P in place, removals and a
    recalibration."""
    views, y, Xte, items, head = _store_head(12, landmarks=landmarks)
    for i in range(200, 210):  # pending rank-one terms in P when the save begins
        head.add(views[i, 0], int(y[i]), views=views[i, 1:], item=items[i])
    arrays, meta = head.to_state(copy=False, frozen=True)
    expect = {k: v.copy() for k, v in arrays.items()}
    before = head.decision_function(Xte)
    unfrozen = head.to_state(copy=False)[0]  # the head's own H: edited in place
    h_before = unfrozen["H"].copy()
    for i in range(210, 240):
        head.add(views[i, 0], int(y[i]), views=views[i, 1:], item=items[i])
    head.remove_many([0, 5, 17])
    for i in range(240, 320 - 60):  # past the 64 pending edits: P is folded
        head.add(views[i % 240, 0], int(y[i % 240]), views=views[i % 240, 1:],
                 item=items[i % 240])
    if landmarks == 100:  # beyond the budget H is edited in place: freezing is what kept it
        assert not np.array_equal(unfrozen["H"], h_before)
    for key, value in expect.items():
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)
    head.refresh()
    for key, value in expect.items():
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)
    saved = load_head(arrays, meta)
    np.testing.assert_array_equal(saved.decision_function(Xte), before)


def test_removing_the_head_files_waits_for_a_save_under_way(tmp_path, backbones, frames,
                                                            monkeypatch):
    """Every sample deleted while the head is being saved in the background: the save is over
    before the head files are removed, so no head of deleted samples is left behind."""
    import threading
    from edge_classifier.learning.state import HEAD_ARRAYS, HEAD_META, StateDir
    with StateDir(tmp_path / "state") as state:
        learner = _learner(state, backbones)
        learner.capture("cat", frames["cat"][0])
        release, real_save, real_wait = threading.Event(), state.save_head, learner.wait_saved
        removed_while_saving = []

        def held(*args):
            assert release.wait(10), "the held save was never released"
            real_save(*args)
        real_remove = state.remove_head

        def remove_head():
            removed_while_saving.append(learner._saver is not None)
            real_remove()

        def wait_saved():
            release.set()
            real_wait()
        monkeypatch.setattr(state, "save_head", held)
        monkeypatch.setattr(state, "remove_head", remove_head)
        monkeypatch.setattr(learner, "wait_saved", wait_saved)
        assert learner.save_in_background()
        assert not learner.save_in_background()  # one at a time
        learner.store.remove_sample("cat", learner.store.sample_ids("cat")[0])
        learner.changed()
        release.set()
        real_wait()
        assert removed_while_saving == [False]
        assert not (tmp_path / "state" / HEAD_META).exists()
        assert not (tmp_path / "state" / HEAD_ARRAYS).exists()


def test_a_finished_background_save_holds_on_to_none_of_the_heads_arrays(tmp_path, backbones,
                                                                        frames):
    """The arrays a save wrote are let go when it ends, not at the next save 30 s later (the
    head may have replaced them meanwhile: 16 MB at 1,024 landmarks)."""
    import gc
    import weakref
    from edge_classifier.learning.state import StateDir
    with StateDir(tmp_path / "state") as state:
        learner = _learner(state, backbones)
        for name in ("cat", "bird"):
            for crop in frames[name][:2]:
                learner.capture(name, crop)
        learner.wait_background()
        old = weakref.ref(learner.head._L)
        assert learner.save_in_background()
        learner._saver.done.wait(10)
        learner.capture("bird", frames["bird"][2])  # a new landmark: L replaced
        gc.collect()
        assert learner._saver is not None  # (not yet collected by a later save ...)
        assert old() is None  # ... and still the old landmarks are gone
        learner.wait_saved()
        assert learner.dirty  # the capture after the save began is still to be saved


def test_sample_checksums_are_taken_once_and_stay_those_saved_heads_hold():
    """A shared table's samples get their CRC when compacted (a loop over 10,000 samples
    took 22 ms at each start and save): the same value as the former definition, which saved
    heads hold (CRC-32 of the indices started from the table's), for every kind of sample."""
    import zlib
    from edge_classifier.learning.compact import Compactor, compact
    from edge_classifier.learning.learner import sample_checksums
    rng = np.random.default_rng(5)
    levels = np.arange(256, dtype=np.float32) * np.float32(0.0235)
    pack = Compactor()
    shared = [pack(levels[np.arange(128).reshape(2, 64)])]  # the levels, learnt from it
    shared += [pack(levels[rng.integers(0, 256, (2, 64))]) for _ in range(4)]
    own = compact(np.array([[0.5, 0.25], [0.25, 1.0]], np.float32))  # its own table
    plain = rng.random((2, 64), dtype=np.float32)  # more than 256 values: kept as it is
    items = shared + [own, plain]
    assert all(s.values is shared[0].values for s in shared) and shared[0]._crc is not None

    def former(item):
        if hasattr(item, "index"):
            return zlib.crc32(np.ascontiguousarray(item.index), zlib.crc32(item.values))
        return zlib.crc32(np.ascontiguousarray(item))
    expect = np.array([former(it) for it in items], np.uint32)
    np.testing.assert_array_equal(sample_checksums(items), expect)
    np.testing.assert_array_equal(sample_checksums(items), expect)  # from the kept ones
    assert sample_checksums([pack(levels[rng.integers(0, 256, (2, 64))])])[0] != expect[0]
    fortran = pack(np.asfortranarray(levels[rng.integers(0, 256, (2, 64))]))  # (an odd .npy)
    assert fortran.values is shared[0].values and sample_checksums([fortran])[0] == former(fortran)
