"""Folder data sets (one subfolder per class) and embedding them with a backbone.

::

    data = scan_folder("trashnet/")         # paths, labels, class names
    result = embed_paths(backbone, data.paths, progress=True)
    result.embeddings.shape                 # (N_ok, D); result.errors lists the bad files
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from .errors import DatasetError, ImageError
from .images import list_images, load_image


@dataclass(frozen=True)
class FolderDataset:
    root: str
    paths: List[str]
    labels: np.ndarray  # N int
    class_names: List[str]


def scan_folder(root: "os.PathLike[str] | str") -> FolderDataset:
    """Every image in ``root/<class>/``, classes sorted by name."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: not a folder (expected one subfolder of images per class)")
    classes = sorted(e for e in os.listdir(root)
                     if not e.startswith(".") and os.path.isdir(os.path.join(root, e)))
    if not classes:
        raise DatasetError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    paths, labels, empty = [], [], []
    for index, name in enumerate(classes):
        files = list_images(os.path.join(root, name))
        if not files:
            empty.append(name)
        paths.extend(files)
        labels.extend([index] * len(files))
    if empty:
        classes_kept = [c for c in classes if c not in empty]
        if not classes_kept:
            raise DatasetError(f"{root}: the class folders hold no images")
        # Re-number without the empty classes so every class has samples.
        remap = {classes.index(c): i for i, c in enumerate(classes_kept)}
        labels = [remap[i] for i in labels]
        classes = classes_kept
    return FolderDataset(root, paths, np.asarray(labels, dtype=np.int64), classes)


@dataclass
class EmbeddedFiles:
    embeddings: np.ndarray  # N_ok x D float32
    ok: np.ndarray  # N bool: which input paths produced an embedding
    errors: List[str] = field(default_factory=list)  # one line per failed file


def embed_paths(backbone, paths: Sequence[str], progress: bool = False,
                on_error: Optional[Callable[[str], None]] = None) -> EmbeddedFiles:
    """Embed image files; a bad file is reported and skipped, the others still processed."""
    rows, ok, errors = [], np.zeros(len(paths), dtype=bool), []
    iterator = paths
    if progress:
        from tqdm import tqdm
        iterator = tqdm(paths, desc="embedding", unit="img", disable=None)
    for i, path in enumerate(iterator):
        try:
            rows.append(backbone.embed(load_image(path)))
        except ImageError as exc:
            errors.append(str(exc))
            if on_error:
                on_error(str(exc))
            continue
        ok[i] = True
    dim = backbone.embedding_dim
    embeddings = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return EmbeddedFiles(embeddings, ok, errors)
