"""Folder data sets (one subfolder per class) and ``file,label1;label2`` CSVs.

::

    data = scan_folder("trashnet/")         # paths, labels, class names
    data = read_csv("labels.csv")           # paths, label sets, class names

Embedding them is :func:`edge_classifier.datasets.embedcache.embed_files`.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from edge_classifier.errors import ClassNameError, DatasetError
from edge_classifier.frames.images import list_images
from edge_classifier.core.names import validate_class_name


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
    for name in classes:
        try:
            validate_class_name(name)
        except ClassNameError as exc:
            raise DatasetError(f"{root}/{name}: folder name is not a valid class name ({exc})") from None
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


@dataclass(frozen=True)
class CsvDataset:
    """A multi-label data set: ``file,label1;label2`` lines (paths relative to the CSV)."""

    path: str
    paths: List[str]
    label_sets: List[List[str]]
    class_names: List[str]

    def indicator(self) -> np.ndarray:
        """NxC 0/1 matrix of which labels each file has."""
        index = {c: i for i, c in enumerate(self.class_names)}
        out = np.zeros((len(self.paths), len(self.class_names)), dtype=np.float32)
        for row, labels in enumerate(self.label_sets):
            for label in labels:
                out[row, index[label]] = 1.0
        return out


_COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_ -]{0,39}")


def is_header_row(row: Sequence[str], base: str) -> bool:
    """Whether a CSV's first row names its columns (``file,labels``, ``filename,label``,
    ``path,class``, ``Image,Labels``...) rather than holding a sample::

        is_header_row(["filename", "label"], "/data")   # True
        is_header_row(["cat1.jpg", "cat"], "/data")      # False: a file name has a dot

    Its first cell looks like a column name (a word: letters, digits, ``_``, ``-`` or spaces,
    no dot, no path separator) and is not a file that exists beside the CSV.
    """
    if not row:
        return False
    first = row[0].strip()
    if not _COLUMN_NAME.fullmatch(first):
        return False
    return not os.path.exists(os.path.join(base, first))


def read_csv(path: "os.PathLike[str] | str") -> CsvDataset:
    """Read a ``file,label1;label2`` CSV (UTF-8, a byte-order mark allowed)::

        data = read_csv("labels.csv")   # data.paths, data.label_sets, data.class_names

    A first row that names the columns (see :func:`is_header_row`) is skipped. Raises
    :class:`DatasetError` naming the line of the first malformed row.
    """
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    paths, label_sets, names = [], [], {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc})") from None
    first = True
    for number, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if first:
            first = False
            if is_header_row(row, base):
                continue
        if len(row) != 2:
            raise DatasetError(f"{path}:{number}: expected 'file,label1;label2', got {len(row)} "
                               "fields")
        file, labels = row[0].strip(), [x.strip() for x in row[1].split(";") if x.strip()]
        if not file:
            raise DatasetError(f"{path}:{number}: empty file name")
        try:
            labels = [validate_class_name(x) for x in labels]
        except ClassNameError as exc:
            raise DatasetError(f"{path}:{number}: {exc}") from None
        for label in labels:
            names.setdefault(label, None)
        paths.append(file if os.path.isabs(file) else os.path.join(base, file))
        label_sets.append(sorted(set(labels)))
    if not paths:
        raise DatasetError(f"{path}: no rows")
    return CsvDataset(path, paths, label_sets, sorted(names))
