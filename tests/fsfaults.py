"""File-system faults for tests, as root (CI) and as a normal user alike.

::

    from fsfaults import needs_root, read_only

    with read_only(tmp_path / "state"):     # writes fail with EACCES (user) or EROFS (root)
        ...

    @needs_root                             # skipped, saying why, when not root
    def test_full_disk(...): ...            # mounts a small tmpfs
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="mounting a small tmpfs needs root (CI runs as "
                                                 "root and runs this)")


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` unwritable for this process until the block ends.

    A normal user loses write permission on ``folder`` and every folder under it; root ignores
    permissions, so for root ``folder`` is bind-mounted read-only onto itself (as on a Pi whose
    SD card went read-only). Either way its files stay readable and are unchanged afterwards.
    """
    folder = Path(folder)
    if ROOT:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for p in folders:
        p.chmod(0o555)
    try:
        yield
    finally:
        for p in folders:
            p.chmod(0o755)
