"""The state directory attacked by an unlucky and by a hostile user: files of the state that are
links, FIFOs, devices or hard links, corrupt headers, kills at bad moments, duplicates, floods
of classes. Each test failed on the code before its fix.

A hostile state could make the old code block forever or read without end, so those checks run
in a fresh interpreter with a bounded address space and a generous time bound: a hang or a
runaway read fails the test instead of stopping the suite.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_classifier.errors import HeadLoadError, StoreError
from edge_classifier.learning.state import StateDir
from edge_classifier.learning.store import SampleStore

IDENTITY = {"model": "m", "sha256": "abc", "embedding_dim": 8, "resize": "crop"}
BOUND = 120  # seconds: a generous bound on a child that must not hang; nothing is timed


def views(seed, n=2, dim=8):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def taught(root, per_class=3, classes=("apple", "pear")):
    """A state with samples, a head, an import list and a last good config."""
    with StateDir(root) as state:
        store = state.open_store(IDENTITY)
        for i, c in enumerate(classes):
            for k in range(per_class):
                store.add_sample(c, views(10 * i + k))
        state.save_head({"w": np.ones((2, 8))}, {"edge_classifier": {"head": "auto"}})
        with state.import_journal() as journal:
            journal.record("/photos/a.jpg", store.sample_ids(classes[0])[0], [classes[0]])
        state.keep_good_config("keyboard = 'off'\n")
    return store


def folder_of(root, name):
    meta = json.loads((root / "store.json").read_text())
    return root / "samples" / next(c["dir"] for c in meta["classes"] if c["name"] == name)


def isolated(code, *args):
    """Run ``code`` (``sys.argv[1:]`` = ``args``) in a fresh interpreter with 3 GiB of address
    space; its CompletedProcess."""
    prelude = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", prelude + code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=BOUND)


# -- the lock: never a way to write outside, never a way to block -------------------------------
@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_lock_that_is_a_link_leaves_its_target_alone(tmp_path, how):
    root = tmp_path / "state"
    taught(root)
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "lock").unlink()
    if how == "symlink":
        (root / "lock").symlink_to(victim)
    else:
        os.link(victim, root / "lock")
    with pytest.raises(StoreError, match="lock must be a plain file"):
        StateDir(root, command="edge-classifier run")
    assert victim.read_text() == "root:x:0:0:root:/root:/bin/bash\n"


def test_a_lock_that_is_a_fifo_is_refused_at_once(tmp_path):
    root = tmp_path / "state"
    taught(root)
    (root / "lock").unlink()
    os.mkfifo(root / "lock")
    done = isolated("import sys\nfrom edge_classifier.learning.state import StateDir\n"
                    "try:\n    StateDir(sys.argv[1])\nexcept Exception as exc:\n    print(exc)\n",
                    root)
    assert done.returncode == 0, done.stderr
    assert "not a regular file" in done.stdout and "lock must be a plain file" in done.stdout


# -- files of the state that are FIFOs or devices: read, nothing blocks, nothing runs away -------
READ_EVERYTHING = """
import json, sys
from edge_classifier.errors import HeadLoadError
from edge_classifier.learning.state import StateDir
out = {}
for write in (False, True):
    state = StateDir(sys.argv[1], write=write)
    store = state.open_store()
    out[str(write)] = {"counts": store.counts(), "imports": len(state.read_imports()),
                       "model": state.model_name(), "head": state.head_name(),
                       "config": state.last_good_config() is not None}
    try:
        state.load_head_files()
    except HeadLoadError as exc:
        out[str(write)]["head_error"] = str(exc)
    state.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_state_files_that_are_fifos_or_devices_neither_block_nor_run_away(tmp_path, kind):
    root = tmp_path / "state"
    taught(root, classes=("apple", "pear", "plum"))
    pear, plum = folder_of(root, "pear"), folder_of(root, "plum")
    targets = [root / n for n in ("store.json", "head.json", "head.npz", "imports.jsonl",
                                  "config.last-good.toml", "imports.json")]
    targets += [pear / "name", next(plum.glob("*.npy"))]
    for path in targets:
        path.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")
    done = isolated(READ_EVERYTHING, root)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for write in ("False", "True"):
        # the class list is rebuilt from the name files; pear's is unreadable, so its folder
        # is left as it is; plum lost the one unreadable sample from the count, not the disk
        assert result[write]["counts"] == {"apple": 3, "plum": 2}, result
        assert result[write]["imports"] == 0 and not result[write]["config"]
        assert "head_error" in result[write]
    assert len(list(pear.glob("*.npy"))) == 3  # nothing of pear was deleted


# -- links inside the state are never followed out of it ----------------------------------------
def test_links_to_another_states_files_are_neither_read_nor_written(tmp_path):
    other = tmp_path / "other"
    taught(other, classes=("cat", "dog"))
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    root = tmp_path / "state"
    taught(root)
    for name in ("head.json", "head.npz", "imports.jsonl", "config.last-good.toml"):
        (root / name).unlink()
        (root / name).symlink_to(other / name)
    reader = StateDir(root, write=False)
    assert reader.read_imports() == {} and reader.last_good_config() is None
    with pytest.raises(HeadLoadError, match="symbolic link"):
        reader.load_head_files()
    with StateDir(root) as state:
        with pytest.raises(StoreError, match="symbolic link"):
            with state.import_journal() as journal:
                journal.record("/photos/b.jpg", "0" * 20, ["apple"])
        state.save_head({"w": np.zeros((1, 8))}, {"edge_classifier": {"head": "auto"}})
        state.keep_good_config("keyboard = 'on'\n")
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before


def test_a_symlinked_samples_folder_is_refused_and_nothing_in_it_is_touched(tmp_path):
    root = tmp_path / "state"
    taught(root)
    outside = tmp_path / "elsewhere"
    (root / "samples").rename(outside)
    (outside / ".trash-keep").mkdir()
    (outside / ".trash-keep" / "photo.jpg").write_bytes(b"precious")
    (outside / ".tmp-notes").write_text("precious")
    (root / "samples").symlink_to(outside)
    listing = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    for readonly in (True, False):
        with pytest.raises(StoreError, match="symbolic link"):
            SampleStore(root, backbone=IDENTITY, readonly=readonly)
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == listing


# -- corrupt or hostile headers cannot take the memory ------------------------------------------
def huge_npy_header(path, shape=(10 ** 8, 10 ** 7)):
    """A .npy whose header claims 4 PB of float32 but holds 64 bytes."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": shape})
        f.write(b"\0" * 64)


def test_a_sample_with_a_lying_header_is_skipped_not_fatal(tmp_path):
    root = tmp_path / "state"
    taught(root)
    huge_npy_header(folder_of(root, "apple") / "00000000000000000001.npy")
    store = SampleStore(root, backbone=IDENTITY)
    assert store.counts() == {"apple": 3, "pear": 3}
    assert any("unreadable sample skipped" in p and "header says" in p for p in store.problems)


def test_a_head_whose_arrays_claim_petabytes_is_rebuilt_not_fatal(tmp_path):
    root = tmp_path / "state"
    taught(root)
    huge_npy_header(tmp_path / "w.npy")
    with zipfile.ZipFile(root / "head.npz", "w") as archive:
        archive.write(tmp_path / "w.npy", "w.npy")
    with pytest.raises(HeadLoadError, match="corrupt"):
        StateDir(root, write=False).load_head_files()
    with zipfile.ZipFile(root / "head.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("w.npy", _npy_bytes(np.zeros((4096, 256))))  # 8 MB in a few KB
    with pytest.raises(HeadLoadError, match="compressed"):
        StateDir(root, write=False).load_head_files()


def _npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# -- the import list: a torn last line does not take the next record with it ----------------------
def test_a_torn_last_import_line_does_not_swallow_the_next_record(tmp_path):
    root = tmp_path / "state"
    store = taught(root)
    with open(root / "imports.jsonl", "a") as f:  # a power cut in the middle of a line
        f.write('{"file": "/photos/torn.jpg", "id": "0000')
    sid = store.sample_ids("pear")[0]
    with StateDir(root) as state:
        with state.import_journal() as journal:
            journal.record("/photos/next.jpg", sid, ["pear"])
        imported = state.read_imports()
    assert imported["/photos/next.jpg"] == {"id": sid, "labels": ["pear"]}
    assert "/photos/a.jpg" in imported and "/photos/torn.jpg" not in imported


# -- a new state is not a lost one -------------------------------------------------------------
def test_a_new_state_reports_no_lost_class_list(tmp_path):
    with StateDir(tmp_path / "state") as state:
        store = state.open_store(IDENTITY)
        assert store.problems == [] and state.problems == []  # was "store.json: missing; rebuilding"
        store.add_sample("apple", views(1))
    (tmp_path / "state" / "store.json").unlink()
    assert any("missing; rebuilding" in p for p in SampleStore(tmp_path / "state").problems)


# -- kill -9 in the middle of a rename -------------------------------------------------------------
KILL_AFTER_NAME_FILE = """
import os, signal, sys
from pathlib import Path
from edge_classifier.core import atomic
from edge_classifier.learning.store import SampleStore
real = atomic.write_text
def write_then_die(path, text):
    real(path, text)
    if Path(path).name == "name":
        os.kill(os.getpid(), signal.SIGKILL)  # between the name file and the class list
atomic.write_text = write_then_die
SampleStore(sys.argv[1]).rename_class("toy", "robot")
"""


def test_a_rename_killed_half_way_is_finished_and_agreed_everywhere(tmp_path):
    root = tmp_path / "state"
    taught(root, classes=("toy",))
    ids = SampleStore(root, backbone=IDENTITY).sample_ids("toy")
    done = isolated(KILL_AFTER_NAME_FILE, root)
    assert done.returncode == -9, done.stderr
    assert json.loads((root / "store.json").read_text())["classes"][0]["name"] == "toy"
    store = SampleStore(root, backbone=IDENTITY)
    assert store.classes == ["robot"] and store.sample_ids("robot") == ids
    assert any("a rename that did not finish" in p for p in store.problems)
    assert json.loads((root / "store.json").read_text())["classes"][0]["name"] == "robot"
    store.add_sample("ROBOT", views(99))  # a later "robot" is the same class
    (root / "store.json").unlink()  # and a lost class list brings back the same
    assert SampleStore(root, backbone=IDENTITY).counts() == {"robot": 4}  # was {"robot": 3},
    # the folder of the real "robot" left out, and the listed "toy" renamed by the lost list


def test_a_class_list_that_swaps_folders_cannot_relabel_samples(tmp_path):
    root = tmp_path / "state"
    store = taught(root)
    ids = {c: store.sample_ids(c) for c in store.classes}
    meta = json.loads((root / "store.json").read_text())
    a, b = meta["classes"]
    a["dir"], b["dir"] = b["dir"], a["dir"]  # apple -> pear's folder, pear -> apple's
    (root / "store.json").write_text(json.dumps(meta))
    for readonly in (True, False):
        again = SampleStore(root, backbone=IDENTITY, readonly=readonly)
        assert {c: again.sample_ids(c) for c in again.classes} == ids
    # a name file claiming a class another folder holds changes nothing either
    (folder_of(root, "pear") / "name").write_text("apple")
    again = SampleStore(root, backbone=IDENTITY)
    assert {c: again.sample_ids(c) for c in again.classes} == ids
    assert any("a class another folder holds" in p for p in again.problems)
    assert (folder_of(root, "pear") / "name").read_text() == "pear"


# -- duplicates: one file, one sample, however it is reached ------------------------------------
@pytest.fixture
def home(tmp_path, models_dir, monkeypatch):
    """A data home of the test's own (its embedding cache starts empty), with the models."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for f in models_dir.iterdir():
        (home / "models" / f.name).symlink_to(f)
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(home))
    return home


@pytest.fixture
def photos(tmp_path, models_dir):
    """Two classes of three small crops each: a folder data set."""
    from PIL import Image
    root = tmp_path / "photos"
    for cls, photo in (("bird", "bird.bmp"), ("cat", "cat.bmp")):
        image = Image.open(models_dir / photo).convert("RGB")
        (root / cls).mkdir(parents=True)
        for i in range(3):
            box = (10 * i, 5 * i, image.width - 7 * i, image.height - 9 * i)
            image.crop(box).resize((96, 72)).save(root / cls / f"{i}.jpg")
    return root


def train(capsys, dataset, state):
    from edge_classifier import cli
    code = cli.main(["train", str(dataset), "--state", str(state), "-q", "--threads", "1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def cache_keys(home):
    from edge_classifier.datasets.embedcache import _read
    return {k for folder in (home / "cache").iterdir() if folder.is_dir()
            for k in _read(folder)[0]}


def test_the_same_pictures_reached_any_way_are_stored_once(tmp_path, capsys, home, photos):
    state = tmp_path / "state"
    assert "6 samples added" in train(capsys, photos, state)
    keys = cache_keys(home)
    link = tmp_path / "link-to-photos"
    link.symlink_to(photos)
    # the same data set through a link: nothing added, nothing embedded again
    assert "0 samples added (6 already imported)" in train(capsys, link, state)
    assert cache_keys(home) == keys
    # a CSV naming one file twice, another through the link and through "..", and a copy
    copy = tmp_path / "copy.jpg"
    copy.write_bytes((photos / "cat" / "2.jpg").read_bytes())
    csv = tmp_path / "labels.csv"
    csv.write_text(f"{photos}/bird/0.jpg,bird\n{photos}/bird/0.jpg,bird\n"
                   f"{link}/cat/1.jpg,cat\n{photos}/cat/../cat/1.jpg,cat\n{copy},cat\n")
    assert "0 samples added (5 already imported)" in train(capsys, csv, state)
    # an import list that was lost: the pictures are still known
    (state / "imports.jsonl").unlink()
    assert "0 samples added (6 already imported)" in train(capsys, photos, state)
    assert SampleStore(state, readonly=True).counts() == {"bird": 3, "cat": 3}


def test_a_file_twice_in_one_new_csv_is_one_sample(tmp_path, capsys, home, photos):
    csv = tmp_path / "labels.csv"
    csv.write_text(f"{photos}/bird/0.jpg,bird;outdoor\n{photos}/bird/0.jpg,bird;outdoor\n"
                   f"{photos}/cat/0.jpg,cat\n")
    state = tmp_path / "state"
    assert "2 samples added (1 already imported)" in train(capsys, csv, state)
    store = SampleStore(state, readonly=True)
    assert store.counts() == {"bird": 1, "cat": 1, "outdoor": 1}
    assert store.sample_ids("bird") == store.sample_ids("outdoor")  # one multi-label sample


# -- a data set of more classes than a state may hold -------------------------------------------
def test_train_stops_creating_classes_at_the_ceiling_and_embeds_no_refused_file(
        tmp_path, capsys, home, photos, monkeypatch):
    from edge_classifier.learning import store as store_module
    monkeypatch.setattr(store_module, "CLASS_CEILING", 4, raising=False)  # 1000 in real life
    files = sorted(photos.rglob("*.jpg"))
    csv = tmp_path / "labels.csv"
    csv.write_text("".join(f"{f},class{i}\n" for i, f in enumerate(files)))  # 6 classes
    from edge_classifier import cli
    code = cli.main(["train", str(csv), "--state", str(tmp_path / "state"), "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert SampleStore(tmp_path / "state", readonly=True).classes == [f"class{i}" for i in range(4)]
    assert "not created" in err and "class4" in err and "class5" in err  # however worded
    assert len(cache_keys(home)) == 4  # the files of refused classes were not embedded


def test_one_file_under_two_labels_on_two_rows_keeps_both(tmp_path, capsys, home, photos):
    csv = tmp_path / "labels.csv"
    csv.write_text(f"{photos}/bird/0.jpg,bird\n{photos}/bird/0.jpg,garden\n"
                   f"{photos}/cat/0.jpg,cat\n")
    state = tmp_path / "state"
    train(capsys, csv, state)
    assert "0 samples added (3 already imported)" in train(capsys, csv, state)
    store = SampleStore(state, readonly=True)
    assert store.counts() == {"bird": 1, "garden": 1, "cat": 1}
    assert store.sample_ids("bird") == store.sample_ids("garden")


# -- a full disk -----------------------------------------------------------------------------------
@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs filled to the last byte (needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs, which needs root (CI is root)")
    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)], check=True)
    try:
        with open(point / "filler", "wb", buffering=0) as f:
            for chunk in (4096, 1):
                try:
                    while f.write(b"\0" * chunk):
                        pass
                except OSError:
                    pass
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_class_refused_by_a_full_disk_leaves_no_folder_behind(full_disk):
    from edge_classifier.errors import StorageFullError
    store = SampleStore(full_disk / "state", backbone=IDENTITY)  # as a device starts
    for _ in range(3):  # e.g. three starts, each adding the config's classes
        with pytest.raises(StorageFullError):
            store.add_class("cat")
    assert list((full_disk / "state" / "samples").iterdir()) == []  # was three empty folders
    assert store.classes == []


# -- class names that draw nothing, or differ only in what draws nothing --------------------------

@pytest.mark.parametrize("name", ["\u3164", "\u2800", "\u115f\u1160", "\uffa0"])
def test_names_that_draw_nothing_are_refused(name):
    from edge_classifier.core.names import validate_class_name
    from edge_classifier.errors import ClassNameError
    with pytest.raises(ClassNameError):
        validate_class_name(name)


@pytest.mark.parametrize("name", ["unknown\u034f", "unknown\ufe0f", "unk\u034fnown"])
def test_unknown_with_an_invisible_mark_is_still_unknown(name):
    from edge_classifier.core.names import validate_class_name
    from edge_classifier.errors import ClassNameError
    with pytest.raises(ClassNameError, match="reserved"):
        validate_class_name(name)


def test_names_differing_only_in_an_invisible_mark_are_one_class(tmp_path):
    store = SampleStore(tmp_path / "s", backbone=IDENTITY)
    store.add_sample("cat", views(1))
    store.add_sample("c\u034fat", views(2))
    assert store.classes == ["cat"]


# -- one owner, even when its lock file is deleted -------------------------------------------------
HOLDER = """
import sys
from edge_classifier.learning.state import StateDir
state = StateDir(sys.argv[1], command="edge-classifier run")
print("HELD", flush=True)
sys.stdin.read()
"""


def test_deleting_the_lock_file_does_not_let_a_second_writer_in(tmp_path):
    from edge_classifier.errors import StateLockedError
    root = tmp_path / "state"
    taught(root)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        (root / "lock").unlink()  # a clean-up script, a hand
        with pytest.raises(StateLockedError, match="in use by"):
            StateDir(root, command="edge-classifier train")
    finally:
        holder.kill()
        holder.wait()
    with StateDir(root, command="edge-classifier train") as state:  # free once it is gone
        assert state._lock.held


# -- the head's two files are one save ------------------------------------------------------------
def test_head_files_from_two_saves_are_not_loaded_as_one(tmp_path):
    root = tmp_path / "state"
    taught(root)
    first = {"w": np.ones((2, 8))}
    with StateDir(root) as state:
        state.save_head(first, {"edge_classifier": {"head": "auto", "fingerprint": "F1"}})
        old_meta = (root / "head.json").read_bytes()
        state.save_head({"w": np.zeros((3, 8))}, {"edge_classifier": {"head": "auto",
                                                                      "fingerprint": "F2"}})
    # what a reader sees in the middle of the second save, or a kill leaves between its writes
    (root / "head.json").write_bytes(old_meta)
    assert StateDir(root, write=False).load_head_files() is None  # refit, not F1 + F2's arrays
    with StateDir(root) as state:
        state.save_head(first, {"edge_classifier": {"head": "auto", "fingerprint": "F1"}})
    arrays, meta = StateDir(root, write=False).load_head_files()
    assert arrays["w"].shape == (2, 8) and meta["edge_classifier"]["fingerprint"] == "F1"
