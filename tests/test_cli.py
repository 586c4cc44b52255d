"""The command line: classify and embed on real models, batches with bad files, exit codes."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_classifier import cli
from edge_classifier.cli.main import build_parser
from edge_classifier.frames.images import load_image


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_classify_json(models_dir, sample, capsys):
    code, out, _ = run(capsys, "classify", str(sample("cat.bmp")), str(sample("parrot.jpg")),
                       "--top", "3", "--json", "--resize", "squash")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "mobilenet_v2_1.0_224_quant"
    assert [r["top"][0]["label"] for r in data["results"]] == ["Egyptian cat", "macaw"]
    assert len(data["results"][0]["top"]) == 3
    probs = [t["probability"] for t in data["results"][0]["top"]]
    assert probs == sorted(probs, reverse=True)


def test_classify_batch_with_bad_files_processes_the_rest(models_dir, sample, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    code, out, err = run(capsys, "classify", str(tmp_path / "missing.png"), str(bad),
                         str(sample("grace_hopper.bmp")), "--top", "1")
    assert code == 1
    assert "military uniform" in out
    assert "missing.png: no such file" in err and "broken.jpg" in err


def test_classify_with_an_embedding_extractor_is_an_error(models_dir, sample, capsys):
    code, _, err = run(capsys, "classify", str(sample("cat.bmp")), "--model",
                       "mobilenet_v1_1.0_224_quant_embedding_extractor")
    assert code == 1 and "cannot classify" in err


def test_unknown_model_is_a_clear_error(models_dir, sample, capsys):
    code, _, err = run(capsys, "classify", str(sample("cat.bmp")), "--model", "resnet")
    assert code == 2 and "unknown model or file 'resnet'" in err  # a usage error


@pytest.fixture
def folder_dataset(sample, tmp_path):
    root = tmp_path / "data"
    for cls, names in {"birds": ["bird.bmp", "parrot.jpg", "owl.jpg"],
                       "food": ["hot_dog.jpg"], "flowers": ["sunflower.bmp"]}.items():
        (root / cls).mkdir(parents=True)
        for n in names:
            shutil.copy(sample(n), root / cls / n)
    (root / "food" / "corrupt.jpg").write_bytes(b"junk")
    (root / "empty").mkdir()
    return root


def test_embed_folder_dataset(folder_dataset, backbones, capsys, tmp_path):
    out = tmp_path / "emb.npz"
    code, stdout, err = run(capsys, "embed", str(folder_dataset), "--out", str(out), "-q")
    assert code == 1  # the corrupt file is reported ...
    assert "corrupt.jpg" in err
    with np.load(out) as data:  # ... and every other file is embedded
        assert list(data["class_names"]) == ["birds", "flowers", "food"]
        assert data["embeddings"].shape == (5, 1024)
        assert sorted(data["labels"].tolist()) == [0, 0, 0, 1, 2]
        assert str(data["model"]) == "mobilenet_v1_1.0_224_quant_embedding_extractor"
        paths = [str(p) for p in data["paths"]]
        index = [p.endswith("parrot.jpg") for p in paths].index(True)
        direct = backbones().embed(load_image(paths[index]))
        np.testing.assert_array_equal(data["embeddings"][index], direct)  # same path, same vector
    assert "5 embeddings" in stdout


def test_embed_with_v2_penultimate(folder_dataset, tmp_path, capsys):
    out = tmp_path / "v2.npz"
    run(capsys, "embed", str(folder_dataset), "--out", str(out), "--model",
        "mobilenet_v2_1.0_224_quant", "-q")
    with np.load(out) as data:
        assert data["embeddings"].shape == (5, 1280)


def test_embed_not_a_folder(tmp_path, capsys):
    code, _, err = run(capsys, "embed", str(tmp_path / "nope"), "--out", str(tmp_path / "x.npz"))
    assert code == 1 and "not a folder" in err


def test_usage_error_exit_code(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["classify"])
    assert info.value.code == 2


def test_console_entry_point_and_module_run(models_dir, sample):
    for argv in ([sys.executable, "-m", "edge_classifier"],
                 [str(Path(sys.executable).with_name("edge-classifier"))]):
        proc = subprocess.run(argv + ["classify", str(sample("parrot.jpg")), "--top", "1"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "macaw" in proc.stdout
        assert "XNNPACK" not in proc.stderr  # runtime chatter is hidden


def _parsers(parser):
    """Every parser under ``parser`` (itself, its commands, their actions), each once."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


def test_every_option_of_every_command_has_help_text():
    parsers = list(_parsers(build_parser()))
    assert {p.prog for p in parsers} >= {"edge-classifier eval", "edge-classifier models fetch",
                                         "edge-classifier run"}
    missing = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}"
               for p in parsers for a in p._actions
               if not a.help or a.help == argparse.SUPPRESS or not a.help.strip()]
    assert missing == []
    for p in parsers:  # every help text formats ('%' escaped, %(default)s valid)
        assert p.format_help()
