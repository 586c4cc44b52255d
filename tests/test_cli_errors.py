"""The command line reports every error as one line on stderr, never a traceback, and exits
with 2 for a usage error (a bad argument, an unknown model or head, a wrong config), 1 for
any other error. Also: CSV header rows and eval's small-class warnings."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_classifier import cli
from edge_classifier.cli.main import run_command
from edge_classifier.datasets.evaluate import few_shot_eval, shot_warnings
from edge_classifier.datasets.folders import is_header_row, read_csv
from edge_classifier.errors import DatasetWarning
from edge_classifier.learning.store import SampleStore


def run(capsys, *argv):
    """(exit status, stdout, stderr) of the CLI, also when argparse exits."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    """The only line of ``err``, which must start with the program name and be no traceback."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edge-classifier: error: "), err
    return lines[0]


@pytest.fixture
def photos(sample, tmp_path):
    """A folder data set of the sample photos: birds 3, flowers 2, food 1."""
    root = tmp_path / "photos"
    for cls, names in {"birds": ["bird.bmp", "parrot.jpg", "owl.jpg"],
                       "flowers": ["sunflower.bmp", "cat.bmp"], "food": ["hot_dog.jpg"]}.items():
        (root / cls).mkdir(parents=True)
        for n in names:
            shutil.copy(sample(n), root / cls / n)
    return root


# -- embed --out -------------------------------------------------------------------------------
def test_embed_into_a_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    # The data set does not exist either: the --out check comes first, so nothing is embedded
    # (the old code embedded everything, then died with a FileNotFoundError traceback).
    code, out, err = run(capsys, "embed", tmp_path / "no-data", "--out",
                         tmp_path / "missing" / "emb.npz")
    assert code == 2 and out == ""
    line = one_line(err)
    assert f"{tmp_path / 'missing'} does not exist" in line
    assert not (tmp_path / "missing").exists()


def test_embed_onto_an_existing_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    code, _, err = run(capsys, "embed", tmp_path / "no-data", "--out", folder)
    assert code == 2
    assert "is a folder; name a file in it" in one_line(err)
    assert list(folder.iterdir()) == []  # nothing written into it, nothing beside it
    assert not (tmp_path / "results.npz").exists()


def test_embed_onto_a_folder_named_like_the_output_is_refused(tmp_path, capsys):
    (tmp_path / "emb.npz").mkdir()
    code, _, err = run(capsys, "embed", tmp_path / "no-data", "--out", tmp_path / "emb")
    assert code == 2 and f"{tmp_path / 'emb.npz'} is a folder" in one_line(err)


def test_embed_still_writes_into_an_existing_folder(photos, tmp_path, capsys):
    code, out, err = run(capsys, "embed", photos, "--out", tmp_path / "emb", "-q")
    assert code == 0, err
    with np.load(tmp_path / "emb.npz") as data:
        assert data["embeddings"].shape == (6, 1024)


def test_console_script_prints_one_line_and_exit_2(tmp_path):
    script = Path(sys.executable).with_name("edge-classifier")
    proc = subprocess.run([str(script), "embed", str(tmp_path), "--out",
                           str(tmp_path / "missing" / "x.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "does not exist" in one_line(proc.stderr)


# -- file system errors and bugs -----------------------------------------------------------------
def test_fetch_into_a_data_directory_that_is_a_file(tmp_path, capsys, monkeypatch, models_dir):
    home = tmp_path / "home"
    home.write_text("a file where the data directory should be")
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(home))
    code, _, err = run(capsys, "models", "fetch", "cat.bmp", "--mirror", models_dir, "-q")
    assert code == 1
    assert str(home) in one_line(err)
    assert home.read_text() == "a file where the data directory should be"


def test_an_os_error_is_one_line_naming_the_path(tmp_path, capsys):
    state = tmp_path / "state"
    SampleStore(state).add_class("cat")
    target = tmp_path / "out"
    target.write_text("not a folder")
    code, _, err = run(capsys, "export", target / "sub", "--state", state)
    assert code == 1
    line = one_line(err)
    assert str(target) in line and "EDGE_CLASSIFIER_DEBUG=1" in line


def test_export_onto_a_file_is_a_usage_error(tmp_path, capsys):
    state = tmp_path / "state"
    SampleStore(state).add_class("cat")
    target = tmp_path / "out"
    target.write_text("not a folder")
    code, _, err = run(capsys, "export", target, "--state", state)
    assert code == 2 and "exists and is not a folder" in one_line(err)
    assert target.read_text() == "not a folder"


def _a_bug(args):
    return {}["missing"]


def test_an_unexpected_exception_is_one_line_with_the_hint(capsys):
    code = run_command(argparse.Namespace(func=_a_bug))
    err = capsys.readouterr().err
    assert code == 1
    line = one_line(err)
    assert "unexpected KeyError: 'missing'" in line and "-v or EDGE_CLASSIFIER_DEBUG=1" in line


def test_debug_shows_the_traceback_then_the_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGE_CLASSIFIER_DEBUG", "1")
    code, _, err = run(capsys, "export", tmp_path / "o", "--state", tmp_path / "none")
    lines = err.splitlines()
    assert code == 1 and lines[0] == "Traceback (most recent call last):"
    assert lines[-1].startswith("edge-classifier: error: ") and "not a state directory" in lines[-1]


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_flag_before_or_after_the_command(tmp_path, capsys, where):
    argv = ["export", tmp_path / "o", "--state", tmp_path / "none"]
    argv = ["-v"] + argv if where == "before" else argv + ["--verbose"]
    code, _, err = run(capsys, *argv)
    assert code == 1 and "Traceback" in err


# -- usage errors: exit status 2 -----------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["eval", "DATA", "--shots", "five"],
     "eval: argument --shots: shots must be positive integers or 'all', not 'five'"),
    (["eval", "DATA", "--shots", "1,0"], "not '0'"),
    (["eval", "DATA", "--head", "magic"], "eval: argument --head: invalid choice: 'magic'"),
    (["eval", "DATA", "--head", "multilabel"], "invalid choice: 'multilabel'"),
    (["train", "DATA", "--head", "magic"], "train: argument --head: invalid choice: 'magic'"),
    (["classify", "x.jpg", "--threads", "x"], "expected a whole number, not 'x'"),
    (["classify", "x.jpg", "--top", "0"], "must be at least 1, not 0"),
    (["embed", "DATA"], "the following arguments are required: --out"),
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_command_lines_exit_2_with_one_line(tmp_path, capsys, argv, message):
    # DATA does not exist: the argument is refused before the data set is looked at.
    argv = [str(tmp_path / "data") if a == "DATA" else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    line = one_line(err)
    assert message in line and line.endswith("--help'")


def test_train_checks_the_head_before_loading_a_model(tmp_path, capsys, photos):
    state = tmp_path / "state"
    code, _, err = run(capsys, "train", photos, "--state", state, "--head", "kernal",
                       "--model", "resnet")
    assert code == 2 and "--head: invalid choice: 'kernal'" in one_line(err)
    assert not state.exists()  # nothing imported


def test_train_accepts_multilabel_and_every_head_name():
    from edge_classifier.cli.main import build_parser
    from edge_classifier.learning.heads import HEAD_NAMES
    parser = build_parser()
    for name in HEAD_NAMES + ("multilabel",):
        assert parser.parse_args(["train", "d", "--head", name]).head == name
    assert parser.parse_args(["eval", "d", "--head", "all"]).head == "all"
    assert parser.parse_args(["eval", "d", "--shots", "3,all"]).shots == [3, "all"]
    assert parser.parse_args(["eval", "d"]).shots == [1, 5, 10, 20, "all"]


def test_unknown_model_exits_2(tmp_path, capsys, photos):
    code, _, err = run(capsys, "train", photos, "--state", tmp_path / "s", "--model", "resnet")
    assert code == 2 and "unknown model or file 'resnet'" in one_line(err)


def test_bad_config_exits_2(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[mqtt]\nqos = 7\n")
    code, _, err = run(capsys, "config", "--check", path)
    assert code == 2 and "mqtt.qos" in one_line(err)
    code, _, err = run(capsys, "run", "--config", path, "--state", tmp_path / "s", "--frames", "1")
    assert code == 2 and "mqtt.qos" in one_line(err)


def test_bad_broker_url_exits_2(tmp_path, capsys):
    code, _, err = run(capsys, "run", "--state", tmp_path / "s", "--broker", "http://host",
                       "--frames", "1")
    assert code == 2 and one_line(err)


def test_other_errors_still_exit_1(tmp_path, capsys):
    code, _, err = run(capsys, "embed", tmp_path / "nope", "--out", tmp_path / "x.npz")
    assert code == 1 and "not a folder" in one_line(err)


# -- CSV header rows -----------------------------------------------------------------------------
@pytest.mark.parametrize("header", ["file,labels", "filename,label", "path,class", "Image,Labels",
                                    "image_path,tags", "\ufefffile name,label"])
def test_csv_header_rows_are_skipped(tmp_path, header):
    path = tmp_path / "labels.csv"
    path.write_text(f"{header}\na.jpg,cat\nsub/b.png,dog;pet\n", encoding="utf-8")
    data = read_csv(path)
    assert data.paths == [str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "b.png")]
    assert data.class_names == ["cat", "dog", "pet"]


def test_csv_without_a_header_keeps_its_first_row(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("\n\ncat1.jpg,cat\n/abs/dog.jpg,dog\n")
    data = read_csv(path)
    assert data.paths == [str(tmp_path / "cat1.jpg"), "/abs/dog.jpg"]
    assert data.label_sets == [["cat"], ["dog"]]


def test_csv_first_row_naming_an_existing_file_is_data(tmp_path):
    (tmp_path / "image").write_bytes(b"")  # a file with a column-like name really exists
    assert not is_header_row(["image", "cat"], str(tmp_path))
    assert is_header_row(["filename", "label"], str(tmp_path))
    path = tmp_path / "labels.csv"
    path.write_text("image,cat\nb.jpg,dog\n")
    assert read_csv(path).paths == [str(tmp_path / "image"), str(tmp_path / "b.jpg")]


def test_train_reads_a_csv_with_a_filename_label_header(tmp_path, capsys, photos):
    rows = ["filename,label"] + [f"{p.relative_to(photos)},{p.parent.name}"
                                 for p in sorted(photos.rglob("*.*"))]
    (photos / "labels.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run(capsys, "train", photos / "labels.csv", "--state", tmp_path / "s", "-q")
    assert code == 0, err
    assert "6 samples added" in out and "classes: birds 3, flowers 2, food 1" in out


# -- eval warnings for small classes -------------------------------------------------------------
def test_shot_warnings_split_and_validation():
    y = np.array([0, 0, 0, 1, 1, 2])
    names = ["birds", "flowers", "food"]
    assert shot_warnings(y, names, [1, 2, "all"]) == [
        "class 'flowers' has 1 training image per split, fewer than k=2: it is trained on "
        "those 1",
        "class 'food' has only 1 image, so it is never tested; give it at least 2"]
    assert shot_warnings(y, names, [1, 2, 5], split=False) == [
        "class 'birds' has 3 training images, fewer than k=5: it is trained on those 3",
        "class 'flowers' has 2 training images, fewer than k=5: it is trained on those 2",
        "class 'food' has only 1 training image; its scores rest on it alone"]
    assert shot_warnings(np.array([0, 0, 0, 0]), ["a", "b"], ["all"]) == [
        "class 'b' has no readable images; it is never predicted"]
    assert shot_warnings(np.repeat([0, 1], 10), ["a", "b"], [1, 5, "all"]) == []


def test_few_shot_eval_warns_before_fitting():
    from edge_classifier.learning.heads.synthetic import make_blobs, make_centres
    rng = np.random.default_rng(0)
    X, y = make_blobs(rng, 3, make_centres(rng, n_classes=2, dim=8))
    with pytest.warns(DatasetWarning) as record:
        few_shot_eval(X[:, None, :], y, ["a", "b"], ["knn"], [5], seeds=1)
    assert [str(w.message) for w in record] == [
        f"class {c!r} has 2 training images per split, fewer than k=5: it is trained on those 2"
        for c in "ab"]


def test_eval_prints_one_warning_line_per_small_class(photos, capsys):
    code, out, err = run(capsys, "eval", photos, "--shots", "1,5", "--seeds", "1", "--head",
                         "knn", "-q")
    assert code == 0
    assert "Traceback" not in err
    assert err.splitlines() == [
        "edge-classifier: warning: class 'birds' has 2 training images per split, fewer than "
        "k=5: it is trained on those 2",
        "edge-classifier: warning: class 'flowers' has 1 training image per split, fewer than "
        "k=5: it is trained on those 1",
        "edge-classifier: warning: class 'food' has only 1 image, so it is never tested; "
        "give it at least 2"]
    assert "knn" in out
