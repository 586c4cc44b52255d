"""A cache of data-set embeddings, so repeated ``eval`` and ``train`` runs skip the backbone.

One folder per (model checksum, resize mode, augmentation) in ``<data home>/cache``, holding
shard files written as the embedding goes (every :data:`SHARD_EVERY` images, atomically), so
an interrupted run keeps its work and the next one resumes where it stopped. Entries are keyed
by each file's real path, size and modification time: an edited file is embedded again::

    views, ok, errors = embed_files(backbone, paths, Augmentation(), progress=True)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from edge_classifier.core import atomic
from edge_classifier.core.paths import data_home
from edge_classifier.errors import ImageError
from edge_classifier.frames.images import load_image
from edge_classifier.learning.augment import Augmentation, embed_views

DECODE = "d2"  # how files are decoded (load_image near the model size); new: embed again
RESIZED_BY = {True: "t", False: "p"}  # frames resized by TFLite's bilinear resize or Pillow's
SHARD_EVERY = 64  # images embedded between two shard writes
MAX_SHARDS = 32  # more than this many shards are merged into one at the end of a run


def file_key(path: str) -> Optional[str]:
    """``real path|size|mtime_ns``: what a cached embedding is valid for (None: unreadable);
    a file reached through a link or another path has one key."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"


def cache_folder(backbone, augmentation: Augmentation, folder: Optional[Path] = None) -> Path:
    folder = Path(folder) if folder else data_home() / "cache"
    resized = RESIZED_BY[getattr(backbone, "resample", None) is not None]
    return folder / (f"emb-{backbone.sha256[:16]}-{backbone.resize}-{augmentation.key()}-"
                     f"{DECODE}{resized}")


def _read(folder: Path) -> Tuple[Dict[str, np.ndarray], List[Path]]:
    cached: Dict[str, np.ndarray] = {}
    shards = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    for path in shards:
        try:
            with np.load(path, allow_pickle=False) as data:
                cached.update(zip(data["keys"].tolist(), data["views"]))
        except (OSError, ValueError, KeyError, EOFError):
            continue  # a damaged shard is simply embedded again
    return cached, shards


def _write(folder: Path, entries: Dict[str, np.ndarray], name: Optional[str] = None) -> bool:
    if not entries:
        return True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / (name or f"{secrets.token_hex(6)}.npz")
        with atomic.atomic_writer(target) as f:
            np.savez(f, keys=np.asarray(list(entries)), views=np.stack(list(entries.values())))
        return True
    except OSError:
        return False  # the cache is an optimisation; a read-only or full disk just skips it


def embed_files(backbone, paths: Sequence[str], augmentation: Augmentation,
                progress: bool = False, cache_dir: Optional[Path] = None,
                use_cache: bool = True, on_error: Optional[Callable[[str], None]] = None
                ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Embed files' views: (N_ok x V x D float32, N bool mask of files that worked, errors)."""
    folder = cache_folder(backbone, augmentation, cache_dir)
    cached, shards = _read(folder) if use_cache else ({}, [])
    keys = [file_key(p) for p in paths]
    todo = [i for i, k in enumerate(keys) if k is None or k not in cached]
    errors: List[str] = []
    fresh: Dict[str, np.ndarray] = {}
    writable = use_cache
    for i in tqdm(todo, desc="embedding", unit="img", disable=None if progress else True):
        try:
            views = embed_views(backbone, load_image(paths[i], size_hint=backbone.input_size),
                                augmentation)
        except ImageError as exc:
            errors.append(str(exc))
            if on_error:
                on_error(str(exc))
            continue
        if keys[i] is not None:
            cached[keys[i]] = fresh[keys[i]] = views
        if writable and len(fresh) >= SHARD_EVERY:
            writable = _write(folder, fresh)
            fresh = {}
    if writable:
        writable = _write(folder, fresh)
    if writable and len(shards) + 1 > MAX_SHARDS and _write(folder, cached, "merged.npz"):
        for old in shards:
            if old.name != "merged.npz":
                with contextlib.suppress(OSError):
                    old.unlink()
    ok = np.array([k is not None and k in cached for k in keys], dtype=bool)
    dim = backbone.embedding_dim
    rows = [cached[k] for k, good in zip(keys, ok) if good]
    views = np.stack(rows) if rows else np.zeros((0, augmentation.count, dim), np.float32)
    return views.astype(np.float32, copy=False), ok, errors
