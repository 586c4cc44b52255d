"""The model manifest: every model and file edge-classifier can download, with checksums.

The manifest lives in the source tree as ``models/models.toml`` and is installed with the package
as ``edge_classifier/_models/``. It lists names, upstream URLs, sizes and SHA-256 sums; never
binaries::

    manifest = load_manifest()
    spec = manifest.model("mobilenet_v2_1.0_224_quant")
    print(spec.kind, spec.input_size, spec.url)
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from edge_classifier.errors import UnknownModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

MODEL_KINDS = ("embedding", "classifier")
FILE_KINDS = ("labels", "image")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Entry:
    """One downloadable file: a model, a label file or a sample image."""

    name: str
    file: str
    url: str
    sha256: str
    kind: str
    description: str = ""
    size: Optional[int] = None  # bytes; None: not checked (only the SHA-256 is)
    input_size: Optional[Tuple[int, int]] = None  # models only: (height, width)
    labels: Optional[str] = None  # classifiers: file name of their label file

    @property
    def is_model(self) -> bool:
        return self.kind in MODEL_KINDS


@dataclass(frozen=True)
class Manifest:
    entries: Tuple[Entry, ...]
    default_embedding_model: str
    default_classifier_model: str

    @functools.cached_property
    def _by_name(self) -> Dict[str, Entry]:
        return {e.name: e for e in self.entries}

    def get(self, name: str) -> Entry:
        """The entry called ``name`` (a model name or a file name such as ``cat.bmp``)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownModelError(
                f"unknown model or file {name!r}; known: {', '.join(self._by_name)} "
                "(see 'edge-classifier models list')"
            ) from None

    def model(self, name: str) -> Entry:
        entry = self.get(name)
        if not entry.is_model:
            raise UnknownModelError(f"{name!r} is a {entry.kind} file, not a model")
        return entry

    @property
    def models(self) -> List[Entry]:
        return [e for e in self.entries if e.is_model]

    def images(self) -> List[Entry]:
        return [e for e in self.entries if e.kind == "image"]

    def with_dependencies(self, names: List[str]) -> List[Entry]:
        """Entries for ``names`` plus the label files their models need, without repeats."""
        out: Dict[str, Entry] = {}
        for name in names:
            entry = self.get(name)
            out[entry.name] = entry
            if entry.labels:
                out[entry.labels] = self.get(entry.labels)
        return list(out.values())


def _entry(raw: dict, where: str) -> Entry:
    missing = [k for k in ("name", "url", "sha256", "kind") if k not in raw]
    if missing:
        raise ValueError(f"manifest {where}: missing {', '.join(missing)}")
    if not _SHA256.match(raw["sha256"]):
        raise ValueError(f"manifest {where}: sha256 must be 64 lower-case hex digits")
    size = raw.get("size")
    if size is not None and (type(size) is not int or size < 1):
        raise ValueError(f"manifest {where}: size must be a positive number of bytes")
    input_size = raw.get("input_size")
    return Entry(
        name=raw["name"],
        file=raw.get("file", raw["name"]),
        url=raw["url"],
        sha256=raw["sha256"],
        kind=raw["kind"],
        description=raw.get("description", ""),
        size=size,
        input_size=tuple(input_size) if input_size else None,
        labels=raw.get("labels"),
    )


def parse_manifest(text: str) -> Manifest:
    """Parse manifest TOML text; raises ``ValueError`` naming the bad entry."""
    data = tomllib.loads(text)
    entries = []
    for i, raw in enumerate(data.get("model", [])):
        entry = _entry(raw, f"model #{i + 1}")
        if entry.kind not in MODEL_KINDS or not entry.input_size:
            raise ValueError(f"manifest model {entry.name!r}: kind must be one of {MODEL_KINDS} "
                             "and input_size given")
        entries.append(entry)
    for i, raw in enumerate(data.get("file", [])):
        entry = _entry(raw, f"file #{i + 1}")
        if entry.kind not in FILE_KINDS:
            raise ValueError(f"manifest file {entry.name!r}: kind must be one of {FILE_KINDS}")
        entries.append(entry)
    manifest = Manifest(tuple(entries), data["default_embedding_model"],
                        data["default_classifier_model"])
    for e in entries:  # every reference must resolve
        if e.labels:
            manifest.get(e.labels)
    manifest.model(manifest.default_embedding_model)
    manifest.model(manifest.default_classifier_model)
    return manifest


@functools.lru_cache(maxsize=1)
def load_manifest() -> Manifest:
    """The manifest installed with the package."""
    return parse_manifest(manifest_path().read_text("utf-8"))


def manifest_path() -> Path:
    """``models/models.toml``: installed as ``edge_classifier/_models/`` by a wheel, read in place
    from a source checkout or an editable install."""
    here = Path(__file__).resolve().parent.parent  # the package folder
    for candidate in (here / "_models" / "models.toml", here.parent / "models" / "models.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the model manifest models.toml is missing from {here}; reinstall "
                            "edge-classifier")
