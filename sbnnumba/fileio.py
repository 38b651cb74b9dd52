"""Atomic file writes (nothing is lost when a write is interrupted), the lock of a run directory, and
checked reading of the versioned ``.npz`` files the library writes (checkpoints, packed networks).

Temporary files are named ``.tmp-<pid>-<random><ext>``: a process killed during a write (SIGKILL, power
loss) leaves one behind, and :func:`remove_stale_temporaries` (called when a run takes the directory's
lock) removes those whose writer is no longer alive on this host.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import time
import zipfile
from collections.abc import Callable, Collection
from typing import IO

import numpy as np

TMP_PREFIX = ".tmp-"
LOCK_NAME = ".sbnnumba.lock"

# What np.load raises on a truncated, corrupt or non-npz file.
NPZ_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile)


def read_versioned_npz(path: str | os.PathLike[str], fmt: str, versions: Collection[int], error: type[Exception],
                       what: str, article: str = "a") -> tuple[int, dict[str, np.ndarray]]:
    """Read every array of an ``.npz`` written with ``meta/format`` = ``fmt`` and a ``meta/version``.

    Parameters
    ----------
    path : path-like
        The file.
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
    version: int | None
    try:
        version = int(arrays["meta/version"])
    except (KeyError, TypeError, ValueError):
        version = None
    if version is None or version not in versions:
        raise error(f"{path}: {what} format version {version}; this sbnnumba reads version(s) "
                    f"{', '.join(map(str, sorted(versions)))}")
    return version, arrays


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> str:
    """Write a file atomically: ``write(f)`` fills a temp file in the same directory, then ``os.replace``.

    A crash or an exception inside ``write`` leaves any previous file at ``path`` untouched and removes
    the temp file. Creates the parent directory if needed. An OSError that names no file (a full disk
    during ``write`` or ``fsync``) is raised again naming ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    write : callable
        ``write(f)`` writes the whole content to the binary file object ``f`` (its return value is ignored).

    Returns
    -------
    str
        ``path`` as a string.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=os.path.splitext(path)[1] or ".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror or str(exc), path) from exc
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> str:
    """Atomically write a text file (UTF-8), through :func:`atomic_write`.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    text : str
        Its whole content.

    Returns
    -------
    str
        ``path`` as a string.
    """
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ================================================================================ run-directory lock
class DirectoryBusy(RuntimeError):
    """Another live process holds the lock of a run directory (:class:`RunLock`)."""


def _process_alive(pid):
    """Whether process ``pid`` exists on this host (a process we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path):
    """The ``{"pid", "host", "since"}`` record of a lock file, or None if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _stale(record):
    """A lock is stale when its holder was a process of this host that no longer exists."""
    return record is not None and record.get("host") == socket.gethostname() and not _process_alive(record["pid"])


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[str]:
    """Remove the ``.tmp-<pid>-*`` files in ``directory`` left by writers that are no longer alive on this
    host (an atomic write interrupted by SIGKILL). Files of live processes, and names without a pid, are
    kept.

    Parameters
    ----------
    directory : str or os.PathLike
        The directory to clean.

    Returns
    -------
    list of str
        The removed paths.
    """
    removed = []
    for name in sorted(os.listdir(directory)):
        if not name.startswith(TMP_PREFIX):
            continue
        pid = name[len(TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        path = os.path.join(directory, name)
        try:
            os.remove(path)
            removed.append(path)
        except FileNotFoundError:  # removed meanwhile by another cleaner
            pass
    return removed


_HELD: dict[str, int] = {}  # real path of a locked directory -> how many RunLocks of this process hold it (re-entrant)


class RunLock:
    """Exclusive use of a run directory by one process, as a context manager.

    Entering creates ``directory`` if needed (so an uncreatable or unwritable directory fails here, before
    any work) and the lock file ``.sbnnumba.lock`` holding ``{"pid", "host", "since"}``, created atomically
    (a hard link of a complete temp file: another process sees no lock or a whole one). A lock held by a
    live process, or by any process of another host, raises :class:`DirectoryBusy` naming the holder; a lock
    left by a dead process of this host is taken over. Then stale temporary files are removed
    (:func:`remove_stale_temporaries`). The lock is re-entrant within a process; leaving removes the file.

    Parameters
    ----------
    directory : str or os.PathLike
        The run directory.
    what : str
        The argument named in messages (e.g. ``"out"``).
    """

    def __init__(self, directory: str | os.PathLike[str], what: str = "out"):
        self.directory, self.what = os.fspath(directory), what
        self.path = os.path.join(self.directory, LOCK_NAME)

    def __enter__(self):
        os.makedirs(self.directory, exist_ok=True)
        key = os.path.realpath(self.directory)
        if _HELD.get(key):
            _HELD[key] += 1
            return self
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        for _ in range(3):  # a stale lock is removed, then taken again
            if self._create(record):
                break
            holder = _holder(self.path)
            if not _stale(holder):
                raise DirectoryBusy(self._busy_message(holder))
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        else:
            raise DirectoryBusy(self._busy_message(_holder(self.path)))
        _HELD[key] = 1
        remove_stale_temporaries(self.directory)
        return self

    def _create(self, record):
        """Create the lock file with ``record``; False if one exists already."""
        tmp = atomic_write_text(os.path.join(self.directory, f"{TMP_PREFIX}{os.getpid()}-lock"),
                                json.dumps(record))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # no hard links on this file system: exclusive creation instead
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            try:
                with open(self.path, "x", encoding="utf-8") as f:
                    f.write(json.dumps(record))
                return True
            except FileExistsError:
                return False
        finally:
            os.remove(tmp)

    def busy_message(self) -> str | None:
        """Whether another process holds the lock now, without taking it or creating anything.

        Returns
        -------
        str or None
            The message :meth:`__enter__` would raise :class:`DirectoryBusy` with (naming the holder), or None
            when there is no lock, a stale one (its process of this host is gone), or this process's own.
        """
        if not os.path.lexists(self.path):
            return None
        holder = _holder(self.path)
        if _stale(holder) or (holder is not None and holder["pid"] == os.getpid()
                              and holder.get("host") == socket.gethostname()):
            return None
        return self._busy_message(holder)

    def _busy_message(self, holder):
        who = ("a process whose lock cannot be read" if holder is None else
               f"process {holder['pid']} on {holder.get('host', '?')} (since {holder.get('since', '?')})")
        return (f"{self.what}: {self.directory} is in use by {who}; wait for that run to end or choose another "
                f"directory (if no such run exists any more, delete {self.path})")

    def __exit__(self, *exc_info):
        key = os.path.realpath(self.directory)
        _HELD[key] -= 1
        if _HELD[key] == 0:
            del _HELD[key]
            holder = _holder(self.path)
            if holder is not None and holder["pid"] == os.getpid():
                os.remove(self.path)
        return False
