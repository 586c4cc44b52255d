"""Model manifest and fetch: mirror copies, downloads over real HTTP on 127.0.0.1, failures."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from edge_classifier import cli
from edge_classifier.errors import ChecksumError, FetchError, ModelNotInstalledError, UnknownModelError
from edge_classifier.backbone.fetch import fetch
from edge_classifier.backbone.integrity import sha256_of, verify
from edge_classifier.backbone.manifest import load_manifest, parse_manifest

from conftest import mirror_dir

LABELS = "imagenet_labels.txt"


def one_file_manifest(url: str, sha: str, name: str = LABELS, size=None) -> object:
    text = (load_manifest_text()
            + f'\n[[file]]\nname = "extra-{name}"\nfile = "{name}"\nurl = "{url}"\n'
              f'sha256 = "{sha}"\nkind = "labels"\n' + (f"size = {size}\n" if size else ""))
    return parse_manifest(text)


def load_manifest_text() -> str:
    from edge_classifier.backbone.manifest import manifest_path
    return manifest_path().read_text()


@pytest.fixture
def mirror(models_dir, tmp_path):
    """A private mirror folder holding copies of the real files (so tests may damage them)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in (LABELS, "cat.bmp", "mobilenet_v1_0.25_128_quant.tflite"):
        (folder / name).write_bytes((models_dir / name).read_bytes())
    return folder


def test_manifest_lists_every_shared_model_with_its_checksum(manifest):
    sums = {}
    src = mirror_dir()
    if src is not None and (src / "SHA256SUMS").is_file():
        for line in (src / "SHA256SUMS").read_text().splitlines():
            digest, name = line.split()
            sums[name] = digest
    assert {m.name for m in manifest.models} == {
        "mobilenet_v1_1.0_224_quant_embedding_extractor", "mobilenet_v2_1.0_224_quant",
        "tf2_mobilenet_v2_1.0_224_ptq", "mobilenet_v1_0.25_128_quant",
        "mobilenet_v1_0.5_160_quant", "mobilenet_v1_0.75_192_quant"}
    for entry in manifest.entries:
        assert entry.url.endswith("/" + entry.file)
        if sums:
            assert sums[entry.file] == entry.sha256
    assert manifest.model("mobilenet_v2_1.0_224_quant").labels == LABELS


def test_fetch_from_mirror_installs_verified_files(mirror, tmp_path):
    dest = tmp_path / "models"
    installed = fetch(["mobilenet_v1_0.25_128_quant"], mirror=mirror, dest=dest)
    names = sorted(p.name for p in installed)
    assert names == [LABELS, "mobilenet_v1_0.25_128_quant.tflite"]  # labels come along
    entry = load_manifest().get("mobilenet_v1_0.25_128_quant")
    assert sha256_of(dest / entry.file) == entry.sha256
    assert not [p for p in dest.iterdir() if p.name.startswith(".tmp-")]


def test_mirror_from_environment_variable(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_CLASSIFIER_MODEL_MIRROR", str(mirror))
    fetch(["cat.bmp"], dest=tmp_path / "m")
    assert (tmp_path / "m" / "cat.bmp").is_file()


def test_checksum_mismatch_installs_nothing(mirror, tmp_path):
    data = bytearray((mirror / "cat.bmp").read_bytes())
    data[1000] ^= 0xFF
    (mirror / "cat.bmp").write_bytes(bytes(data))
    dest = tmp_path / "models"
    with pytest.raises(ChecksumError, match="cat.bmp: checksum mismatch"):
        fetch(["cat.bmp"], mirror=mirror, dest=dest)
    assert list(dest.iterdir()) == []  # no partial or temporary file


def test_corrupt_installed_file_is_replaced(mirror, tmp_path):
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "cat.bmp").write_bytes(b"garbage")
    fetch(["cat.bmp"], mirror=mirror, dest=dest)
    assert sha256_of(dest / "cat.bmp") == load_manifest().get("cat.bmp").sha256


def test_installed_file_is_not_copied_again(mirror, tmp_path):
    dest = tmp_path / "models"
    fetch(["cat.bmp"], mirror=mirror, dest=dest)
    os.utime(dest / "cat.bmp", (1, 1))
    fetch(["cat.bmp"], mirror=mirror, dest=dest)
    assert (dest / "cat.bmp").stat().st_mtime == 1


def test_file_missing_from_mirror_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FetchError, match="owl.jpg: owl.jpg is not in the mirror folder"):
        fetch(["owl.jpg"], mirror=tmp_path / "empty", dest=tmp_path / "m")


def test_batch_fetch_reports_every_failure_and_keeps_the_good_files(mirror, tmp_path):
    dest = tmp_path / "m"
    with pytest.raises(FetchError) as info:
        fetch(["cat.bmp", "owl.jpg", "bird.bmp"], mirror=mirror, dest=dest)
    assert "owl.jpg" in str(info.value) and "bird.bmp" in str(info.value)
    assert (dest / "cat.bmp").is_file()


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model or file 'nope'"):
        fetch(["nope"], mirror=tmp_path, dest=tmp_path)


def test_verify_says_how_to_fetch(tmp_path, manifest):
    with pytest.raises(ModelNotInstalledError, match="edge-classifier models fetch cat.bmp"):
        verify([manifest.get("cat.bmp")], tmp_path)


@pytest.fixture
def no_mirror(monkeypatch):
    """Downloads must really go over HTTP, even where CI exports a mirror folder."""
    monkeypatch.delenv("EDGE_CLASSIFIER_MODEL_MIRROR", raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_is_a_clear_error(tmp_path, models_dir, no_mirror):
    port = _free_port()  # nothing listens there: connection refused
    manifest = one_file_manifest(f"http://127.0.0.1:{port}/{LABELS}",
                                 sha256_of(models_dir / LABELS))
    with pytest.raises(FetchError, match=f"extra-{LABELS}: cannot download .*--mirror DIR"):
        fetch([f"extra-{LABELS}"], dest=tmp_path / "m", manifest=manifest)
    assert not (tmp_path / "m" / LABELS).exists()


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802
        if not self.truncate:
            return super().do_GET()
        data = Path(self.directory, self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])  # then hang up


@pytest.fixture
def http_server(mirror):
    servers = []

    def start(truncate=False):
        handler = type("H", (_Handler,), {"truncate": truncate})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(mirror)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_download_over_http_with_progress(http_server, models_dir, tmp_path, no_mirror):
    url = http_server()
    manifest = one_file_manifest(f"{url}/{LABELS}", sha256_of(models_dir / LABELS))
    seen = []

    class Bar:
        def __init__(self, total, desc):
            seen.append(total)

        def update(self, n):
            seen.append(n)

        def close(self):
            pass
    fetch([f"extra-{LABELS}"], dest=tmp_path / "m", manifest=manifest, progress=Bar)
    size = (models_dir / LABELS).stat().st_size
    assert (tmp_path / "m" / LABELS).read_bytes() == (models_dir / LABELS).read_bytes()
    assert seen[0] == size and sum(seen[1:]) == size


def test_interrupted_download_leaves_no_partial_file(http_server, models_dir, tmp_path,
                                                    no_mirror):
    url = http_server(truncate=True)
    manifest = one_file_manifest(f"{url}/{LABELS}", sha256_of(models_dir / LABELS))
    with pytest.raises(FetchError, match=f"extra-{LABELS}"):
        fetch([f"extra-{LABELS}"], dest=tmp_path / "m", manifest=manifest)
    assert list((tmp_path / "m").iterdir()) == []


def test_cli_models_fetch_and_list(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(tmp_path / "home"))
    assert cli.main(["models", "fetch", "cat.bmp", "--mirror", str(mirror)]) == 0
    capsys.readouterr()
    assert cli.main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["cat.bmp"]["installed"] is True
    assert rows["owl.jpg"]["installed"] is False
    assert rows["mobilenet_v2_1.0_224_quant"]["input_size"] == [224, 224]


def test_cli_fetch_failure_exits_nonzero_with_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(tmp_path / "home"))
    (tmp_path / "empty").mkdir()
    assert cli.main(["models", "fetch", "owl.jpg", "--mirror", str(tmp_path / "empty")]) == 1
    assert "owl.jpg is not in the mirror folder" in capsys.readouterr().err


# -- installed files are checked; unwritable data directories ----------------------------------
def test_manifest_gives_every_file_its_size(manifest):
    src = mirror_dir()
    for entry in manifest.entries:
        assert entry.size is not None and entry.size > 0
        if src is not None:
            assert (src / entry.file).stat().st_size == entry.size


@pytest.mark.parametrize("size", ["-1", "0", '"12"', "1.5", "true"])
def test_manifest_rejects_a_bad_size(size):
    text = load_manifest_text().replace("size = 21686", f"size = {size}", 1)
    assert text != load_manifest_text()
    with pytest.raises(ValueError, match="size must be a positive number of bytes"):
        parse_manifest(text)


def test_cli_models_list_shows_a_modified_file(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(tmp_path / "home"))
    assert cli.main(["models", "fetch", "cat.bmp", "--mirror", str(mirror), "-q"]) == 0
    installed = tmp_path / "home" / "models" / "cat.bmp"
    data = bytearray(installed.read_bytes())
    data[2000] ^= 0x01
    installed.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["models", "list", "--json"]) == 0
    row = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}["cat.bmp"]
    assert row["installed"] is False and row["status"] == "modified"
    assert "SHA-256" in row["problem"]
    assert cli.main(["models", "list"]) == 0
    out, err = capsys.readouterr()
    line = next(line for line in out.splitlines() if line.startswith("cat.bmp "))
    assert " modified " in line and " installed " not in line
    assert f"{installed}: modified" in err and "models fetch cat.bmp" in err


def test_fetch_replaces_a_modified_file_and_says_so(mirror, tmp_path):
    dest = tmp_path / "models"
    fetch(["cat.bmp"], mirror=mirror, dest=dest)
    with open(dest / "cat.bmp", "ab") as f:
        f.write(b"x")
    said = []
    fetch(["cat.bmp"], mirror=mirror, dest=dest, log=said.append)
    assert said[0] == "cat.bmp: modified (523915 bytes, the manifest says 523914); replacing it"
    assert sha256_of(dest / "cat.bmp") == load_manifest().get("cat.bmp").sha256


def test_a_fetched_file_is_not_hashed_at_its_first_load(mirror, tmp_path, manifest):
    from edge_classifier.backbone.integrity import check_files
    dest = tmp_path / "models"
    fetch(["cat.bmp"], mirror=mirror, dest=dest)  # hashed while copied
    check, = check_files([manifest.get("cat.bmp")], dest)
    assert check.ok and not check.hashed


def test_a_source_larger_than_the_manifest_says_is_cut_off(mirror, tmp_path, models_dir):
    manifest = one_file_manifest("http://unused/", sha256_of(models_dir / LABELS), size=1000)
    with pytest.raises(ChecksumError, match=f"extra-{LABELS}: larger than the manifest's 1000"):
        fetch([f"extra-{LABELS}"], mirror=mirror, dest=tmp_path / "m", manifest=manifest)
    assert list((tmp_path / "m").iterdir()) == []


def test_a_folder_where_the_file_goes_is_a_fetch_error(mirror, tmp_path):
    dest = tmp_path / "models"
    (dest / "cat.bmp").mkdir(parents=True)
    with pytest.raises(FetchError, match=r"cat.bmp: cannot write .*cat.bmp \(Is a directory\)"):
        fetch(["cat.bmp"], mirror=mirror, dest=dest)
    assert [p.name for p in dest.iterdir()] == ["cat.bmp"]  # no temporary file left


def _fetch_cli(capsys, mirror, *names):
    code = cli.main(["models", "fetch", *names, "--mirror", str(mirror), "-q"])
    out, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize("in_the_way", ["home", "home/models"])
def test_cli_fetch_with_a_file_where_the_folder_should_be(mirror, tmp_path, monkeypatch, capsys,
                                                          in_the_way):
    home = tmp_path / "home"
    blocker = tmp_path / in_the_way
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(home))
    code, err = _fetch_cli(capsys, mirror, "cat.bmp")
    assert code == 1
    assert err == (f"edge-classifier: error: cannot write to the models folder {home / 'models'} "
                   f"({blocker} is a file, not a folder); move {blocker} away, or set "
                   "EDGE_CLASSIFIER_HOME to a folder you can write\n")
    assert blocker.read_text() == "not a folder"


@pytest.fixture
def read_only_home(tmp_path):
    """``(home, make_read_only)``: a data directory that can be made read-only for real. Root
    ignores permissions, so as root it is a tmpfs mounted read-only (skipped where root may not
    mount); otherwise the folder's write permission is removed."""
    home = tmp_path / "home"
    home.mkdir()
    if os.geteuid() != 0:
        yield home, lambda: home.chmod(0o555)
        home.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip("running as root, where chmod does not stop writes, and a read-only tmpfs "
                    f"cannot be mounted ({mounted.stderr.strip()})")

    def make_read_only():
        subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
    try:
        yield home, make_read_only
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


def test_cli_fetch_into_a_read_only_data_directory(mirror, read_only_home, monkeypatch, capsys):
    home, make_read_only = read_only_home
    make_read_only()
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(home))
    code, err = _fetch_cli(capsys, mirror, "cat.bmp")
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"edge-classifier: error: cannot write to the models folder "
                          f"{home / 'models'} (")
    assert "set EDGE_CLASSIFIER_HOME to a folder you can write" in err


def test_read_only_folder_with_everything_installed_is_fine(mirror, read_only_home, monkeypatch,
                                                            capsys):
    home, make_read_only = read_only_home
    monkeypatch.setenv("EDGE_CLASSIFIER_HOME", str(home))
    assert _fetch_cli(capsys, mirror, "cat.bmp")[0] == 0
    (home / "models" / ".verified.json").unlink()  # nothing remembered: must hash, cannot save
    make_read_only()
    assert _fetch_cli(capsys, mirror, "cat.bmp") == (0, "")
    assert cli.main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["cat.bmp"]["status"] == "installed"
