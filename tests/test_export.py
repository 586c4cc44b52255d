"""export-model: the trained classifier as one TFLite file, run by the bare interpreter.

A state is taught through ``edge-classifier train`` on part of the 70 % of TrashNet's seeded
70/30 split (20 images a class), exported through ``edge-classifier export-model``, and every
image of a subset of the 30 % (40 a class, 241 images) is run by the package and by LiteRT's
own ``Interpreter`` on the exported file. The whole split is checked by
``tools/check_export.py`` (too slow for CI with a cold embedding cache).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_classifier import cli
from edge_classifier.backbone.export import GraphEditor
from edge_classifier.cli.learn import open_learner
from edge_classifier.datasets.folders import scan_folder
from edge_classifier.errors import UnsupportedHeadError
from edge_classifier.frames.images import load_image
from edge_classifier.learning.export import (EXPORTABLE_HEADS, OUTPUTS, build_model,
                                             head_constants, head_only_model,
                                             read_export_metadata, run_exported)
from edge_classifier.learning.heads import make_head
from edge_classifier.learning.heads.metrics import stratified_split
from edge_classifier.learning.heads.synthetic import make_task
from edge_classifier.learning.state import StateDir

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

REPO = Path(__file__).resolve().parents[1]
TRASHNET = Path(os.environ.get("EDGE_CLASSIFIER_BENCH_DATA",
                               REPO.parent / "shared" / "datasets" / "trashnet"))
TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 40
TFLITE_RUNTIME_ENV = "EDGE_CLASSIFIER_TFLITE_RUNTIME_PYTHON"


def first_per_class(indices, labels, n):
    seen, keep = {}, []
    for i in indices:
        c = int(labels[i])
        if seen.get(c, 0) < n:
            seen[c] = seen.get(c, 0) + 1
            keep.append(int(i))
    return keep


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_csv(path: Path, data, indices) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "labels"])
        for i in indices:
            writer.writerow([data.paths[i], data.class_names[data.labels[i]]])
    return path


@pytest.fixture(scope="module")
def split(models_dir):
    if not TRASHNET.is_dir():
        pytest.skip(f"TrashNet not found at {TRASHNET} (set EDGE_CLASSIFIER_BENCH_DATA)")
    data = scan_folder(str(TRASHNET))
    train, test = stratified_split(data.labels, 0.3, np.random.default_rng(0))
    return (data, first_per_class(train, data.labels, TRAIN_PER_CLASS),
            first_per_class(test, data.labels, TEST_PER_CLASS))


@pytest.fixture(scope="module")
def taught(split, tmp_path_factory):
    """(work folder, state) taught through ``train`` and exported through ``export-model``."""
    data, train, _ = split
    work = tmp_path_factory.mktemp("export")
    state = work / "state"
    table = write_csv(work / "train.csv", data, train)
    assert cli.main(["train", str(table), "--state", str(state), "--no-thumbnails", "-q"]) == 0
    assert cli.main(["export-model", str(work / "trash.tflite"), "--state", str(state)]) == 0
    return work, state


@pytest.fixture(scope="module")
def package(split, taught):
    """The package's answers on every test image: (learner, prepared pixels, predictions,
    unknown scores)."""
    data, _, test = split
    _, root = taught
    state = StateDir(root, write=False)
    learner = open_learner(_Args(), state)
    pixels, predictions, scores = [], [], []
    for i in test:
        x = learner.backbone.prepare(load_image(data.paths[i]))
        p = learner.predict_embedding(learner.backbone.run_prepared(x).embedding)
        pixels.append(x)
        predictions.append(p)
        scores.append(float(learner.head.unknown_score(p.embedding[None])[0]))
    return learner, pixels, predictions, np.array(scores)


class _Args:
    threads = None
    command = "test"


def run_bare(model: Path, pixels):
    """Probabilities and unknown scores from LiteRT's own interpreter, nothing of ours."""
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    probs, unknown = interpreter.get_output_details()
    P, U = [], []
    for x in pixels:
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        P.append(interpreter.get_tensor(probs["index"])[0].astype(np.float64))
        U.append(float(interpreter.get_tensor(unknown["index"]).reshape(-1)[0]))
    return np.array(P), np.array(U)


def labels_of(P, U, classes, threshold):
    return ["unknown" if u > threshold else classes[int(np.argmax(p))] for p, u in zip(P, U)]


def assert_matches_package(model: Path, package, tolerance=0.01):
    learner, pixels, predictions, scores = package
    classes = learner.head.classes
    P, U = run_bare(model, pixels)
    threshold = read_export_metadata(model.read_bytes())["unknown_threshold"]
    assert threshold == pytest.approx(learner.head.unknown_threshold)
    assert labels_of(P, U, classes, threshold) == [p.label for p in predictions]
    want = np.array([[p.scores[c] for c in classes] for p in predictions])
    assert np.max(np.abs(P - want)) < tolerance
    assert np.max(np.abs(U - scores)) < 0.01 * max(1.0, float(np.max(np.abs(scores))))
    return P, U


def test_exported_file_gives_the_package_label_and_probabilities(split, taught, package):
    work, _ = taught
    _, _, test = split
    P, _ = assert_matches_package(work / "trash.tflite", package)
    assert len(P) == len(test) > 200
    assert len(set(np.argmax(P, axis=1))) >= 4  # it tells classes apart, not one answer


def test_outputs_are_probabilities_then_the_unknown_score(taught, package):
    work, _ = taught
    learner = package[0]
    interpreter = Interpreter(model_path=str(work / "trash.tflite"))
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    assert list(inp["shape"]) == [1, 224, 224, 3] and inp["dtype"] == np.uint8
    scale, zero = inp["quantization"]  # Coral's classify example feeds raw pixels when so
    assert abs(scale * 128 - 1) < 1e-5 and zero == 128
    outs = interpreter.get_output_details()
    assert [d["name"] for d in outs] == list(OUTPUTS)
    assert [list(d["shape"]) for d in outs] == [[1, len(learner.head.classes)], [1, 1]]
    assert all(d["dtype"] == np.float32 for d in outs)
    signature = interpreter.get_signature_list()["serving_default"]
    assert signature["outputs"] == list(OUTPUTS)


def test_labels_file_is_in_teachable_machine_format(taught, package):
    work, _ = taught
    classes = package[0].head.classes
    lines = (work / "labels.txt").read_text("utf-8").splitlines()
    assert lines == [f"{i} {name}" for i, name in enumerate(classes)]
    # Coral's read_label_file: "<index> <name>" lines
    parsed = dict(re.split(r"[:\s]+", line.strip(), maxsplit=1) for line in lines)
    assert {int(k): v for k, v in parsed.items()} == dict(enumerate(classes))


def test_float16_points_keep_the_labels_in_a_smaller_file(taught, package, capsys):
    work, state = taught
    out = work / "half.tflite"
    code, stdout, _ = run(capsys, "export-model", out, "--state", state, "--float16",
                          "--labels", work / "half-labels.txt")
    assert code == 0 and "MB" in stdout
    assert out.stat().st_size < (work / "trash.tflite").stat().st_size
    assert read_export_metadata(out.read_bytes())["points"] == "float16"
    assert_matches_package(out, package)


def graph_structure(content: bytes):
    editor = GraphEditor(content)
    codes = [editor._fbu.get_builtin_code_from_operator_code(c) for c in editor.model.operatorCodes]
    g = editor.graph
    return ([(codes[op.opcodeIndex], list(op.inputs), list(op.outputs)) for op in g.operators],
            [list(t.shape) for t in g.tensors])


def test_the_threshold_and_standardisation_are_constants_only(package):
    """Refitting the unknown threshold (another quantile, other scales) changes constants and
    metadata, never the graph, and the exported score follows the head's."""
    learner, _, predictions, _ = package
    head = learner.head.inner
    X = np.stack([p.embedding for p in predictions[:20]])
    before = learner.head.unknown_score(X)
    first = build_model(learner.backbone, learner.head).content
    saved = dict(head._open)
    try:
        head._open.update(dist_loc=saved["dist_loc"] + 0.05, doubt_scale=saved["doubt_scale"] * 2,
                          threshold=saved["threshold"] + 1.0)
        second = build_model(learner.backbone, learner.head)
        want = learner.head.unknown_score(X)
    finally:
        head._open.clear()
        head._open.update(saved)
    assert np.max(np.abs(want - before)) > 0.1  # the change matters
    assert graph_structure(second.content) == graph_structure(first)
    assert second.content != first
    assert read_export_metadata(second.content)["unknown_threshold"] == \
        pytest.approx(saved["threshold"] + 1.0)
    small = Interpreter(model_content=head_only_model(second.constants, second.nonnegative))
    small.allocate_tensors()
    _, U = run_exported(small, X)
    assert np.max(np.abs(U - want)) < 1e-2 * max(1.0, float(np.max(np.abs(want))))


@pytest.mark.parametrize("name, params, n_train, signed", [
    ("auto", {}, 12, False),
    ("kernel", {}, 150, False),  # 600 samples: the package's float32 path
    ("kernel", {"kernel": "cosine"}, 10, True),
    ("least_squares", {}, 20, True),
    ("auto", {"landmarks": 8}, 10, False),  # auto beyond its landmark budget (40 samples)
])
def test_head_ops_match_every_exportable_head(name, params, n_train, signed):
    Xtr, ytr, Xte, _, _ = make_task(1, n_classes=4, dim=48, n_train=n_train, n_test=25)
    if signed:
        Xtr, Xte = Xtr - 1.0, Xte - 1.0
    head = make_head(name, **params).fit(Xtr, ytr, ["a", "b", "c", "d"])
    interpreter = Interpreter(model_content=head_only_model(head_constants(head), not signed))
    interpreter.allocate_tensors()
    P, U = run_exported(interpreter, Xte)
    assert np.max(np.abs(P - head.predict_proba(Xte))) < 1e-3
    want = head.unknown_score(Xte)
    assert np.max(np.abs(U - want) / np.maximum(1.0, np.abs(want))) < 1e-3
    labels, _ = head.predict(Xte)
    assert np.array_equal(np.where(U > head.unknown_threshold, -1, P.argmax(axis=1)), labels)


def test_a_class_without_samples_gets_probability_zero():
    Xtr, ytr, Xte, _, _ = make_task(2, n_classes=3, dim=32, n_train=8, n_test=10)
    head = make_head("kernel").fit(Xtr, ytr, ["a", "b", "c", "empty"])
    interpreter = Interpreter(model_content=head_only_model(head_constants(head), True))
    interpreter.allocate_tensors()
    P, _ = run_exported(interpreter, Xte)
    assert np.all(P[:, 3] == 0) and np.allclose(P.sum(axis=1), 1, atol=1e-5)
    assert np.max(np.abs(P - head.predict_proba(Xte))) < 1e-3


def test_other_heads_are_refused_naming_the_ones_that_export(split, tmp_path, capsys):
    data, train, _ = split
    table = write_csv(tmp_path / "train.csv", data, train[:12])
    state = tmp_path / "state"
    assert run(capsys, "train", table, "--state", state, "--head", "softmax", "--no-thumbnails",
               "-q")[0] == 0
    code, _, err = run(capsys, "export-model", tmp_path / "m.tflite", "--state", state)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "softmax head cannot be exported" in err and ", ".join(EXPORTABLE_HEADS) in err
    assert not (tmp_path / "m.tflite").exists() and not (tmp_path / "labels.txt").exists()
    with pytest.raises(UnsupportedHeadError):
        head_constants(make_head("knn").fit(np.eye(3, dtype=np.float32), [0, 1, 2]))


@pytest.mark.parametrize("target, problem", [
    ("missing/trash.tflite", "does not exist"),
    ("", "is a folder"),
])
def test_bad_output_paths_are_usage_errors(taught, tmp_path, capsys, target, problem):
    _, state = taught
    code, _, err = run(capsys, "export-model", tmp_path / target, "--state", state)
    assert code == 2 and problem in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_labels_onto_the_model_itself_is_a_usage_error(taught, tmp_path, capsys):
    _, state = taught
    model = tmp_path / "m.tflite"
    code, _, err = run(capsys, "export-model", model, "--state", state, "--labels", model)
    assert code == 2 and "is the model file itself" in err
    assert not model.exists()


def test_export_of_a_state_never_taught_says_so(tmp_path, capsys):
    code, _, err = run(capsys, "export-model", tmp_path / "m.tflite", "--state", tmp_path / "no")
    assert code == 1 and "not a state directory" in err and err.count("\n") == 1
    assert not (tmp_path / "no").exists() and not (tmp_path / "m.tflite").exists()


def test_exported_file_runs_under_tflite_runtime(taught):
    """The same file run by tflite-runtime (and the package on tflite-runtime): its Python
    3.11 x86-64 wheel (2.14.0) needs NumPy 1, so it runs from a separate environment named by
    $EDGE_CLASSIFIER_TFLITE_RUNTIME_PYTHON (``pip install tflite-runtime 'numpy<2' pillow
    tqdm``), which ``.ci/run`` sets up, so CI runs it."""
    python = os.environ.get(TFLITE_RUNTIME_ENV)
    if not python:
        pytest.skip(f"set {TFLITE_RUNTIME_ENV} to a Python with tflite-runtime and NumPy 1")
    work, _ = taught
    (work / "model.tflite").write_bytes((work / "trash.tflite").read_bytes())
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGE_CLASSIFIER_BENCH_DATA=str(TRASHNET))
    proc = subprocess.run(
        [python, str(REPO / "tools" / "check_export.py"), "--work", str(work), "--compare-only",
         "--test-per-class", "3"],  # tflite-runtime has no XNNPACK: ~0.5 s an invoke here
        capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["runtime"].startswith("tflite-runtime")
    assert result["label_agreement"] == 1.0 and result["max_probability_difference"] < 0.01
    assert result["images"] == 18


def test_a_state_of_one_sample_exports_as_never_unknown(models_dir, tmp_path, capsys):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "cat" / "cat.bmp").write_bytes((models_dir / "cat.bmp").read_bytes())
    state = tmp_path / "state"
    assert run(capsys, "train", tmp_path / "data", "--state", state, "-q")[0] == 0
    code, out, _ = run(capsys, "export-model", tmp_path / "cat", "--state", state)
    assert code == 0 and "never unknown" in out
    model = tmp_path / "cat.tflite"  # .tflite added
    assert read_export_metadata(model.read_bytes())["unknown_threshold"] is None
    assert (tmp_path / "labels.txt").read_text("utf-8") == "0 cat\n"
    P, U = run_bare(model, [np.full((224, 224, 3), 90, np.uint8)])
    assert P.tolist() == [[1.0]] and np.isfinite(U).all()
