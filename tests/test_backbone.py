"""The TFLite backbone on the real models: golden labels, embeddings, every input type."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from edge_classifier.backbone.integrity import CACHE_NAME, MODIFIED, check_files, sha256_of
from edge_classifier.backbone.model import Backbone, dequantize
from edge_classifier.errors import (InvalidModelError, ModelError, ModelModifiedError,
                                    ModelNotInstalledError)
from edge_classifier.frames.images import load_image, preprocess

import tflite_builder

V1_EXTRACTOR = "mobilenet_v1_1.0_224_quant_embedding_extractor"
V2 = "mobilenet_v2_1.0_224_quant"

GOLDEN = [("cat.bmp", "Egyptian cat"), ("parrot.jpg", "macaw"),
          ("grace_hopper.bmp", "military uniform")]


@pytest.mark.parametrize("resize", ["squash", "crop"])
@pytest.mark.parametrize("image,label", GOLDEN)
def test_golden_top1_labels_of_mobilenet_v2(backbones, sample, image, label, resize):
    backbone = backbones(V2, resize)
    result = backbone.run(load_image(sample(image)))
    (top, probability), = backbone.top_k(result.scores, 1)
    assert top == label
    assert 0.5 < probability <= 1.0


def test_scores_are_probabilities_over_the_1001_labels(backbones, sample):
    scores = backbones(V2).run(load_image(sample("parrot.jpg"))).scores
    assert scores.shape == (1001,) and scores.dtype == np.float32
    assert abs(float(scores.sum()) - 1.0) < 0.05


@pytest.mark.parametrize("name,dim", [(V1_EXTRACTOR, 1024), (V2, 1280),
                                      ("tf2_mobilenet_v2_1.0_224_ptq", 1280),
                                      ("mobilenet_v1_0.25_128_quant", 256),
                                      ("mobilenet_v1_0.5_160_quant", 512),
                                      ("mobilenet_v1_0.75_192_quant", 768)])
def test_embedding_size_of_every_model(backbones, sample, name, dim):
    backbone = backbones(name)
    embedding = backbone.embed(load_image(sample("owl.jpg")))
    assert backbone.embedding_dim == dim
    assert embedding.shape == (dim,) and embedding.dtype == np.float32
    assert np.isfinite(embedding).all() and embedding.std() > 0


def test_extractor_has_no_scores(backbones, sample):
    backbone = backbones(V1_EXTRACTOR)
    assert not backbone.has_scores and backbone.run(load_image(sample("cat.bmp"))).scores is None
    with pytest.raises(ModelError, match="no class scores"):
        backbone.top_k(None)


def test_v2_penultimate_is_the_pooled_layer_and_scores_are_unchanged(backbones, sample, models_dir):
    backbone = backbones(V2)
    assert "AvgPool" in backbone.penultimate.name and backbone.penultimate.size == 1280
    plain = Backbone(models_dir / f"{V2}.tflite", embedding="output")  # the unmodified graph
    image = load_image(sample("cat.bmp"))
    np.testing.assert_array_equal(plain.run(image).embedding, backbone.run(image).scores)


def test_embeddings_are_nonnegative_relu6_activations(backbones, sample):
    # Both MobileNet embeddings come after ReLU6 and average pooling: 0 <= e <= 6.
    for name in (V1_EXTRACTOR, V2):
        e = backbones(name).embed(load_image(sample("bird.bmp")))
        assert e.min() >= 0 and e.max() <= 6.01


def test_same_image_same_embedding_through_every_path(backbones, sample):
    backbone = backbones(V1_EXTRACTOR)
    image = load_image(sample("sunflower.bmp"))
    a = backbone.embed(image)
    b = backbone.run_prepared(backbone.prepare(image)).embedding
    c = backbone.run(image.copy()).embedding
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_different_images_give_different_embeddings(backbones, sample):
    backbone = backbones(V1_EXTRACTOR)
    a = backbone.embed(load_image(sample("cat.bmp")))
    b = backbone.embed(load_image(sample("hot_dog.jpg")))
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cos < 0.9


def test_dequantize_uses_wide_arithmetic():
    q = np.array([0, 255], dtype=np.uint8)
    np.testing.assert_allclose(dequantize(q, 0.5, 128), [-64.0, 63.5])
    q8 = np.array([-128, 127], dtype=np.int8)
    np.testing.assert_allclose(dequantize(q8, 1.0, -128), [0.0, 255.0])


@pytest.mark.parametrize("name", [None, "mobilenet_v2_1.0_224_quant"])
def test_the_8_bit_fast_path_gives_the_wide_arithmetics_exact_values(backbones, name):
    backbone = backbones(name)
    outputs = [backbone._embedding_out] + ([backbone._scores_out] if backbone.has_scores else [])
    rng = np.random.default_rng(0)
    for detail in outputs:
        scale, zero = detail["quantization"]
        q = np.arange(256, dtype=np.uint8)
        for s, z in [(scale, zero)] + [(float(v), int(z)) for v, z in
                                       zip(rng.uniform(1e-5, 2, 50).astype(np.float32),
                                           rng.integers(0, 256, 50))]:
            wide = (s * (q.astype(np.int64) - z)).astype(np.float32)
            assert np.array_equal(dequantize(q, s, z), wide)
    signed = np.arange(-128, 128, dtype=np.int8)
    assert np.array_equal(dequantize(signed, 0.0234375, -3),
                          (0.0234375 * (signed.astype(np.int64) + 3)).astype(np.float32))


def test_a_frame_already_at_the_input_size_is_used_as_it_is(backbones, sample):
    backbone = backbones()
    frame = preprocess(load_image(sample("cat.bmp")), backbone.input_size, "crop")
    prepared = backbone.prepare(frame)
    assert prepared.base is frame and np.array_equal(prepared, frame)  # no copy, no resize
    small = preprocess(frame, (100, 120), "crop")
    assert backbone.prepare(small).shape == (*backbone.input_size, 3)


def test_float_input_model_gets_normalised_pixels(tmp_path):
    path = tmp_path / "float.tflite"
    path.write_bytes(tflite_builder.float_pool_model(16))
    backbone = Backbone(path)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(backbone.run_prepared(pixels).embedding,
                               tflite_builder.expected_pool(pixels), atol=1e-5)
    assert backbone.input_size == (16, 16) and backbone.embedding_dim == 3


def test_threads_are_configurable(models_dir, sample):
    image = load_image(sample("cat.bmp"))
    one = Backbone.from_name(V1_EXTRACTOR, models_dir=models_dir, num_threads=1)
    two = Backbone.from_name(V1_EXTRACTOR, models_dir=models_dir, num_threads=2)
    np.testing.assert_array_equal(one.embed(image), two.embed(image))


def test_zero_byte_model_is_named(tmp_path):
    path = tmp_path / "empty.tflite"
    path.write_bytes(b"")
    with pytest.raises(InvalidModelError, match=r"empty.tflite: the model file is empty"):
        Backbone(path)


def test_non_tflite_file_is_rejected(tmp_path, sample):
    path = tmp_path / "cat.tflite"
    path.write_bytes(sample("cat.bmp").read_bytes())
    with pytest.raises(InvalidModelError, match="cat.tflite: not a TFLite model"):
        Backbone(path)


def test_corrupt_tflite_is_rejected(tmp_path, models_dir):
    data = (models_dir / f"{V1_EXTRACTOR}.tflite").read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[:4096])
    with pytest.raises(InvalidModelError, match="cut.tflite"):
        Backbone(path)


def test_model_that_is_not_an_image_model(tmp_path):
    path = tmp_path / "add.tflite"
    path.write_bytes(tflite_builder.non_image_model())
    with pytest.raises(InvalidModelError, match=r"add.tflite: not an image model \(input shape \[1, 4\]"):
        Backbone(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelNotInstalledError, match="nothing.tflite"):
        Backbone(tmp_path / "nothing.tflite")


def test_model_not_fetched_says_how_to_fetch(tmp_path):
    with pytest.raises(ModelNotInstalledError, match="edge-classifier models fetch"):
        Backbone.from_name(V2, models_dir=tmp_path)


# -- installed models are checked against the manifest at load --------------------------------
SMALL = "mobilenet_v1_0.25_128_quant"
LABELS = "imagenet_labels.txt"


@pytest.fixture
def own_models(models_dir, tmp_path):
    """A private models folder holding copies of a small classifier and its labels (so tests may
    damage them; the session's folder is shared)."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in (f"{SMALL}.tflite", LABELS):
        shutil.copyfile(models_dir / name, folder / name)
    return folder


def _flip_byte(path, offset=None):
    """Change one byte in place: same size, still a loadable model."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_from_name_refuses_a_model_changed_after_fetch(own_models):
    _flip_byte(own_models / f"{SMALL}.tflite")
    Backbone(own_models / f"{SMALL}.tflite")  # the damage does not stop the runtime loading it
    with pytest.raises(ModelModifiedError) as info:
        Backbone.from_name(SMALL, models_dir=own_models)
    message = str(info.value)
    assert f"{own_models / SMALL}.tflite" in message and "SHA-256" in message
    assert f"edge-classifier models fetch {SMALL}" in message and "\n" not in message


def test_a_model_of_the_wrong_size_is_refused_without_hashing(own_models, manifest):
    with open(own_models / f"{SMALL}.tflite", "ab") as f:
        f.write(b"\0" * 16)
    check, _ = check_files(manifest.with_dependencies([SMALL]), own_models)
    assert check.status == MODIFIED and not check.hashed
    assert check.problem == f"{525598 + 16} bytes, the manifest says 525598"
    with pytest.raises(ModelModifiedError, match="525614 bytes, the manifest says 525598"):
        Backbone.from_name(SMALL, models_dir=own_models)


def test_a_modified_label_file_is_refused(own_models):
    path = own_models / LABELS
    path.write_text(path.read_text().replace("macaw", "mcaaw"))  # same length
    with pytest.raises(ModelModifiedError, match=f"{LABELS} is not the file the manifest names"):
        Backbone.from_name(SMALL, models_dir=own_models)


def test_a_file_is_hashed_once_then_answered_from_the_cache(own_models, manifest):
    entries = manifest.with_dependencies([SMALL])
    assert [(c.status, c.hashed) for c in check_files(entries, own_models)] == [
        ("installed", True), ("installed", True)]
    assert [(c.status, c.hashed) for c in check_files(entries, own_models)] == [
        ("installed", False), ("installed", False)]
    cache = json.loads((own_models / CACHE_NAME).read_text())
    assert cache["files"][f"{SMALL}.tflite"]["sha256"] == manifest.get(SMALL).sha256
    os.utime(own_models / LABELS)  # touched: hashed again
    assert [c.hashed for c in check_files(entries, own_models)] == [False, True]


def test_a_change_that_keeps_size_and_mtime_is_still_caught(own_models, manifest):
    path = own_models / f"{SMALL}.tflite"
    Backbone.from_name(SMALL, models_dir=own_models)  # verified and remembered
    before = path.stat()
    _flip_byte(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as rsync -t or touch -r would
    assert path.stat().st_size == before.st_size
    with pytest.raises(ModelModifiedError, match="SHA-256"):
        Backbone.from_name(SMALL, models_dir=own_models)


def test_from_name_answers_from_the_cache_not_by_rehashing(own_models):
    Backbone.from_name(SMALL, models_dir=own_models)
    cache_path = own_models / CACHE_NAME
    cache = json.loads(cache_path.read_text())
    cache["files"][f"{SMALL}.tflite"]["sha256"] = "0" * 64  # what a rehash would overwrite
    cache_path.write_text(json.dumps(cache))
    with pytest.raises(ModelModifiedError, match="SHA-256 000000000000"):
        Backbone.from_name(SMALL, models_dir=own_models)


@pytest.mark.parametrize("damage", ["not json {", '{"version": 99, "files": {}}', "[1, 2]",
                                    '{"version": 1, "files": {"x": 3}}'])
def test_a_damaged_cache_means_hashing_again(own_models, manifest, damage):
    (own_models / CACHE_NAME).write_text(damage)
    checks = check_files(manifest.with_dependencies([SMALL]), own_models)
    assert [(c.status, c.hashed) for c in checks] == [("installed", True), ("installed", True)]
    assert json.loads((own_models / CACHE_NAME).read_text())["version"] == 1


def test_a_cache_that_cannot_be_written_only_costs_a_rehash(own_models, manifest):
    (own_models / CACHE_NAME).mkdir()  # atomic replace onto a folder fails
    for _ in range(2):
        checks = check_files(manifest.with_dependencies([SMALL]), own_models)
        assert [(c.status, c.hashed) for c in checks] == [("installed", True)] * 2
    assert Backbone.from_name(SMALL, models_dir=own_models).sha256 == manifest.get(SMALL).sha256


def test_from_name_identity_carries_the_manifest_digest(own_models, manifest):
    backbone = Backbone.from_name(SMALL, models_dir=own_models)
    assert backbone.identity["sha256"] == manifest.get(SMALL).sha256
    assert backbone.sha256 == sha256_of(own_models / f"{SMALL}.tflite")


def test_a_model_loaded_by_path_is_not_checked_against_the_manifest(own_models, manifest):
    path = own_models / f"{SMALL}.tflite"
    _flip_byte(path)
    backbone = Backbone(path, name=SMALL)
    assert backbone.sha256 == sha256_of(path) != manifest.get(SMALL).sha256
    assert backbone.embedding_dim == 256
