"""Real file permissions in tests.

CI runs as root, and root reads any file whatever its mode. :func:`as_another_user` runs a block with the
effective user and group of ``nobody`` (65534), so the kernel checks permissions as it would for a reader
without rights; a test run by an ordinary user runs the block as that user. Files the block must reach live
under :func:`world_traversable_dir` (pytest's temporary folders are private to their owner).
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534


@contextmanager
def as_another_user():
    """Run the block as a user who owns none of the test's files (every thread of the process: glibc's
    seteuid applies to all of them)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def world_traversable_dir(prefix: str = "hlip-permissions-") -> Path:
    """A new folder (mode 755 under /tmp) that another user can list and enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def lock(path: Path) -> Path:
    """No permission for anyone but root: the folder (or file) ``path``, mode 000."""
    Path(path).chmod(0)
    return Path(path)


def remove(path: Path) -> None:
    """Give the owner its rights back everywhere under ``path`` and delete it."""
    for root, dirs, files in os.walk(path, topdown=True):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)
