"""Learning from data sets: train, predict, eval on the real model; head persistence; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edge_classifier import cli
from edge_classifier.cli.learn import open_learner
from edge_classifier.errors import DatasetError
from edge_classifier.learning.state import HEAD_ARRAYS, HEAD_META, StateDir

CLASSES = {"bird": ["bird.bmp", "parrot.jpg"], "cat": ["cat.bmp"], "food": ["hot_dog.jpg"]}


def variants(image: Image.Image, n: int, rng) -> list:
    """``n`` different crops (60-95 % of the frame, anywhere) of a photo."""
    out = []
    w, h = image.size
    for _ in range(n):
        s = rng.uniform(0.6, 0.95)
        cw, ch = int(w * s), int(h * s)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(image.crop((left, top, left + cw, top + ch)))
    return out


@pytest.fixture(scope="module")
def dataset(models_dir, tmp_path_factory):
    """Class folders of crops of the sample photos: train/ (6 per class) and val/ (3 per class)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for cls, photos in CLASSES.items():
        crops = []
        for p in photos:
            crops += variants(Image.open(models_dir / p).convert("RGB"), 9 // len(photos) + 1, rng)
        for split, part in (("train", crops[:6]), ("val", crops[6:9])):
            (root / split / cls).mkdir(parents=True)
            for i, im in enumerate(part):
                im.save(root / split / cls / f"{i}.jpg", quality=90)
    return root


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_then_predict(dataset, tmp_path, capsys, sample):
    state = tmp_path / "state"
    code, out, err = run(capsys, "train", dataset / "train", "--state", state, "-q")
    assert code == 0, err
    assert "18 samples added" in out and "bird 6, cat 6, food 6" in out
    images = sorted((dataset / "val").rglob("*.jpg"))
    code, out, _ = run(capsys, "predict", *images, "--state", state, "--json")
    assert code == 0
    results = json.loads(out)["results"]
    right = sum(r["label"] == p.parent.name for r, p in zip(results, images))
    assert right >= 7  # of 9 held-out crops
    for r in results:
        assert set(r["scores"]) == {"bird", "cat", "food"}
        assert abs(sum(r["scores"].values()) - 1) < 1e-3 and 0 <= r["confidence"] <= 1
        assert isinstance(r["unknown"], bool)


def test_something_never_taught_is_unknown(dataset, tmp_path, capsys, sample):
    state = tmp_path / "state"
    run(capsys, "train", dataset / "train", "--state", state, "-q")
    code, out, _ = run(capsys, "predict", sample("sunflower.bmp"), "--state", state, "--json")
    (result,) = json.loads(out)["results"]
    assert result["label"] == "unknown" and result["unknown"] is True


def test_training_again_skips_what_was_imported(dataset, tmp_path, capsys):
    state = tmp_path / "state"
    run(capsys, "train", dataset / "train", "--state", state, "-q")
    code, out, _ = run(capsys, "train", dataset / "train", "--state", state, "-q")
    assert code == 0 and "0 samples added (18 already imported)" in out


def test_predict_batch_with_a_bad_file(dataset, tmp_path, capsys):
    state = tmp_path / "state"
    run(capsys, "train", dataset / "train", "--state", state, "-q")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    good = next((dataset / "val" / "cat").iterdir())
    code, out, err = run(capsys, "predict", bad, good, "--state", state)
    assert code == 1 and "bad.jpg" in err and f"{good}: " in out


def test_predict_with_nothing_learned(tmp_path, capsys, sample):
    code, _, err = run(capsys, "predict", sample("cat.bmp"), "--state", tmp_path / "empty")
    assert code == 1 and "is not a state directory" in err
    assert not (tmp_path / "empty").exists()  # asking never creates one


def learner_for(state, head=None):
    class Args:
        pass
    args = Args()
    args.state, args.threads, args.head = str(state), None, head
    with StateDir(state) as owner:
        return open_learner(args, owner)


def test_saved_head_is_reused_and_a_damaged_one_rebuilt(dataset, tmp_path, capsys, sample):
    state = tmp_path / "state"
    run(capsys, "train", dataset / "train", "--state", state, "-q")
    learner = learner_for(state)
    assert learner.load_saved_head() is not None and learner.problems == []
    image = np.asarray(Image.open(sample("cat.bmp")).convert("RGB"))
    before = learner.predict(image)
    (state / HEAD_ARRAYS).write_bytes(b"PK\x03\x04 truncated")
    rebuilt = learner_for(state)
    assert any("corrupt" in p for p in rebuilt.problems)
    after = rebuilt.predict(image)
    assert after.label == before.label and abs(after.confidence - before.confidence) < 1e-6
    assert learner_for(state).problems == []  # the rebuilt head was saved


def test_head_of_another_backbone_is_rebuilt(dataset, tmp_path, capsys):
    state = tmp_path / "state"
    run(capsys, "train", dataset / "train", "--state", state, "-q")
    meta = json.loads((state / HEAD_META).read_text())
    meta["edge_classifier"]["backbone"]["sha256"] = "0" * 64
    meta["edge_classifier"]["backbone"]["model"] = "another_model"
    (state / HEAD_META).write_text(json.dumps(meta))
    learner = learner_for(state)
    assert any("trained on another_model" in p for p in learner.problems)
    assert learner.head is not None and len(learner.store) == 18


def test_samples_of_another_model_are_refused(dataset, tmp_path, capsys):
    state = tmp_path / "state"
    run(capsys, "train", dataset / "train", "--state", state, "-q")
    code, _, err = run(capsys, "train", dataset / "train", "--state", state, "--model",
                       "mobilenet_v2_1.0_224_quant", "-q")
    assert code == 1 and "embedded with mobilenet_v1" in err


def test_single_class_is_that_class_or_unknown(dataset, tmp_path, capsys, sample):
    state = tmp_path / "state"
    only = tmp_path / "only"
    (only / "cat").mkdir(parents=True)
    for p in (dataset / "train" / "cat").iterdir():
        (only / "cat" / p.name).write_bytes(p.read_bytes())
    run(capsys, "train", only, "--state", state, "-q")
    code, out, _ = run(capsys, "predict", sample("cat.bmp"), sample("sunflower.bmp"),
                       "--state", state, "--json")
    labels = [r["label"] for r in json.loads(out)["results"]]
    assert labels == ["cat", "unknown"]


def test_eval_json(dataset, capsys):
    code, out, err = run(capsys, "eval", dataset / "train", "--val", dataset / "val",
                         "--shots", "1,3,all", "--seeds", "2", "--head", "all", "--json", "-q")
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == "mobilenet_v1_1.0_224_quant_embedding_extractor"
    heads = {r["head"] for r in data["results"]}
    assert heads == {"auto", "kernel", "least_squares", "softmax", "imprinting", "knn"}
    shots = {r["shots"] for r in data["results"]}
    assert shots == {1, 3, "all"}
    best = next(r for r in data["results"] if r["head"] == "auto" and r["shots"] == "all")
    assert best["accuracy"] >= 0.75
    assert set(best["per_class"]) == {"bird", "cat", "food"}
    assert {"accuracy", "accuracy_deployed", "unknown_rate", "ece", "fit_ms", "per_class"} <= set(best)
    assert best["accuracy_deployed"] <= best["accuracy"] and 0 <= best["unknown_rate"] < 0.5


def test_eval_human_report_has_a_confusion_matrix(dataset, capsys):
    code, out, _ = run(capsys, "eval", dataset / "train", "--shots", "2,all", "--seeds", "1",
                       "-q")
    assert code == 0
    assert "confusion matrix" in out and "precision" in out and "k=all" in out


def test_eval_bad_shots_and_head(dataset, capsys):  # usage errors: refused by the parser
    with pytest.raises(SystemExit) as info:
        run(capsys, "eval", dataset / "train", "--shots", "0,x")
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        run(capsys, "eval", dataset / "train", "--head", "magic")
    assert info.value.code == 2 and "invalid choice: 'magic'" in capsys.readouterr().err


def test_multilabel_csv(dataset, tmp_path, capsys, sample):
    rows = ["file,labels"]
    for cls, extra in (("bird", "animal"), ("cat", "animal"), ("food", "")):
        for p in sorted((dataset / "train" / cls).iterdir()):
            rows.append(f"{p},{cls};{extra}" if extra else f"{p},{cls}")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    state = tmp_path / "state"
    code, out, err = run(capsys, "train", csv_path, "--state", state, "-q")
    assert code == 0, err
    code, out, _ = run(capsys, "predict", next((dataset / "val" / "cat").iterdir()),
                       "--state", state, "--json")
    (result,) = json.loads(out)["results"]
    assert set(result["label"].split(";")) == {"animal", "cat"}
    assert set(result["scores"]) == {"animal", "bird", "cat", "food"}


@pytest.mark.parametrize("text,message", [
    ("file,labels\na.jpg\n", ":2: expected 'file,label1;label2'"),
    ("a.jpg,../etc\n", ":1: class name '../etc' contains a path separator"),
    ("file,labels\n", "no rows"),
])
def test_bad_csv_names_the_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, _, err = run(capsys, "train", path, "--state", tmp_path / "s")
    assert code == 1 and message in err


def test_folder_named_unknown_is_refused(tmp_path):
    from edge_classifier.datasets.folders import scan_folder
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a valid class name"):
        scan_folder(tmp_path)


def test_export_round_trip(dataset, tmp_path, capsys):
    state = tmp_path / "state"
    run(capsys, "train", dataset / "train", "--state", state, "-q")
    code, out, _ = run(capsys, "export", tmp_path / "out", "--state", state)
    assert code == 0 and "18 thumbnails of 3 classes" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bird", "cat", "food"]
    code, out, _ = run(capsys, "train", tmp_path / "out", "--state", tmp_path / "again", "-q")
    assert code == 0 and "18 samples added" in out


def test_predict_reads_no_sample_when_the_saved_head_matches(dataset, tmp_path, capsys, sample,
                                                             monkeypatch):
    """A read-only store lists the samples at open and reads one only when it is needed: with
    a saved head that matches, predict reads none (it took seconds at 10,000 samples)."""
    from edge_classifier.learning import store_disk
    state = tmp_path / "state"
    run(capsys, "train", dataset / "train", "--state", state, "-q")
    code, expected, _ = run(capsys, "predict", sample("cat.bmp"), "--state", state, "--json")
    assert code == 0
    real = store_disk.load_views
    monkeypatch.setattr(store_disk, "load_views",
                        lambda path: pytest.fail(f"predict read {path.name}"))
    code, out, err = run(capsys, "predict", sample("cat.bmp"), "--state", state, "--json")
    assert code == 0 and err == "" and json.loads(out) == json.loads(expected)
    # without a saved head the samples are read after all, and the head is fitted from them
    monkeypatch.setattr(store_disk, "load_views", real)
    (state / HEAD_META).unlink()
    code, out, err = run(capsys, "predict", sample("cat.bmp"), "--state", state, "--json")
    assert code == 0 and json.loads(out)["results"][0]["label"] == \
        json.loads(expected)["results"][0]["label"]


def test_a_damaged_sample_found_by_a_reader_is_skipped_and_kept_on_disk(dataset, tmp_path,
                                                                         capsys, sample):
    from edge_classifier.learning.state import StateDir
    state = tmp_path / "state"
    run(capsys, "train", dataset / "train", "--state", state, "-q")
    victim = sorted(state.glob("samples/*/*.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated after its header
    (state / HEAD_META).unlink()  # the reader must fit: every sample is read
    code, out, err = run(capsys, "predict", sample("cat.bmp"), "--state", state, "--json")
    assert code == 0, err
    assert f"{victim.name}: unreadable sample skipped" in err and "header says" in err
    assert victim.exists() and len(victim.read_bytes()) == 200  # a reader changes nothing
    store = StateDir(state, write=False).open_store()
    assert len(store) == 18  # listed: not read yet
    views, y, _ = store.samples_matrix()
    assert views.shape[0] == y.size == len(store) == 17
    assert any(victim.name in p for p in store.problems)
