"""Atomic file writes (nothing is lost when a write is interrupted) and checked reading of the
versioned ``.npz`` files the library writes (checkpoints, packed networks)."""
from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

# What np.load raises on a truncated, corrupt or non-npz file.
NPZ_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile)


def read_versioned_npz(path, fmt, versions, error, what, article="a"):
    """Read every array of an ``.npz`` written with ``meta/format`` = ``fmt`` and a ``meta/version``.

    Parameters
    ----------
    path : path-like
    fmt : str
        Expected ``meta/format``.
    versions : collection of int
        Readable ``meta/version`` values.
    error : type
        Exception class raised (with a message naming ``path``) for anything but a missing file.
    what : str
        The kind of file, for messages (e.g. ``"sbnnumba checkpoint"``).
    article : str
        Its indefinite article ("an sbnnumba checkpoint").

    Returns
    -------
    version : int
    arrays : dict name -> ndarray (loaded, the file is closed)

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    error
        Corrupt, truncated or unreadable file, another format, or a version not in ``versions``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
    except NPZ_READ_ERRORS as exc:
        raise error(f"{path}: corrupt or unreadable {what} ({type(exc).__name__}: {exc})") from None
    if "meta/format" not in arrays or str(arrays["meta/format"]) != fmt:
        raise error(f"{path}: not {article} {what} (no 'meta/format' = {fmt!r})")
    try:
        version = int(arrays["meta/version"])
    except (KeyError, TypeError, ValueError):
        version = None
    if version not in versions:
        raise error(f"{path}: {what} format version {version}; this sbnnumba reads version(s) "
                    f"{', '.join(map(str, sorted(versions)))}")
    return version, arrays


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
