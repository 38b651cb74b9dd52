"""Atomic file writes: nothing is lost when a write is interrupted."""
from __future__ import annotations

import os
import tempfile


def atomic_write(path, write):
    """Write a file atomically: ``write(f)`` fills a temp file in the same directory, then ``os.replace``.

    A crash or an exception inside ``write`` leaves any previous file at ``path`` untouched and removes
    the temp file. Creates the parent directory if needed. Returns ``path`` as a string.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1] or ".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path, text):
    """Atomically write a text file (UTF-8)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
