"""A cache of data-set embeddings, so repeated ``eval`` and ``train`` runs skip the backbone.

One ``.npz`` per (model checksum, resize mode, augmentation) in ``<data home>/cache``, keyed by
each file's absolute path, size and modification time: an edited file is embedded again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from edge_classifier.core import atomic
from edge_classifier.learning.augment import Augmentation, embed_views
from edge_classifier.errors import ImageError
from edge_classifier.frames.images import load_image
from edge_classifier.core.paths import data_home


def _file_key(path: str) -> Optional[str]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def cache_file(backbone, augmentation: Augmentation, folder: Optional[Path] = None) -> Path:
    folder = Path(folder) if folder else data_home() / "cache"
    return folder / f"emb-{backbone.sha256[:16]}-{backbone.resize}-{augmentation.key()}.npz"


def embed_files(backbone, paths: Sequence[str], augmentation: Augmentation,
                progress: bool = False, cache_dir: Optional[Path] = None,
                use_cache: bool = True, on_error=None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Embed files' views: (N_ok x V x D float32, N bool mask of files that worked, errors)."""
    target = cache_file(backbone, augmentation, cache_dir)
    cached = {}
    if use_cache and target.is_file():
        try:
            with np.load(target, allow_pickle=False) as data:
                cached = dict(zip(data["keys"].tolist(), data["views"]))
        except (OSError, ValueError, KeyError):
            cached = {}  # a damaged cache is simply rebuilt
    keys = [_file_key(p) for p in paths]
    todo = [i for i, k in enumerate(keys) if k not in cached]
    errors: List[str] = []
    if todo:
        iterator = todo
        if progress:
            from tqdm import tqdm
            iterator = tqdm(todo, desc="embedding", unit="img", disable=None)
        for i in iterator:
            try:
                cached[keys[i]] = embed_views(backbone, load_image(paths[i]), augmentation)
            except ImageError as exc:
                errors.append(str(exc))
                if on_error:
                    on_error(str(exc))
        if use_cache and len(cached):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic.atomic_writer(target) as f:
                    np.savez(f, keys=np.asarray(list(cached)), views=np.stack(list(cached.values())))
            except OSError:
                pass  # the cache is an optimisation; a read-only or full disk just skips it
    ok = np.array([k in cached for k in keys], dtype=bool)
    dim = backbone.embedding_dim
    rows = [cached[k] for k, good in zip(keys, ok) if good]
    views = np.stack(rows) if rows else np.zeros((0, augmentation.count, dim), np.float32)
    return views.astype(np.float32, copy=False), ok, errors
