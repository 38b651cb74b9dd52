"""Progress bars: tqdm when shown, and nothing at all when not.

``tqdm(disable=True)`` is not free of side effects: every instance, shown or not, registers itself
under tqdm's global write lock, which holds a *multiprocessing* lock (created on first use and shared
with every process forked afterwards), and the first one starts tqdm's monitor thread. A process
killed while it holds that lock (a run killed with SIGKILL, as a sweep's worker or the fault tests may
be) leaves it held for good, and every process forked from the same parent then blocks forever at its
next progress bar: measured, forked training runs hung in ``tqdm.__new__`` after an earlier sibling was
killed (``tests/test_faults.py``). So a bar that is not shown is a :class:`SilentBar`, which takes no
lock and starts no thread.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["SilentBar", "progress_bar"]


class SilentBar:
    """The part of tqdm's interface the library uses (iteration, ``update``, ``set_postfix``, ``close``, ``with``),
    doing nothing.

    Parameters
    ----------
    iterable : iterable, optional
        Iterated by ``for item in bar`` unchanged.
    """

    def __init__(self, iterable: Iterable[Any] | None = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: float = 1) -> None:
        """Ignore ``n`` steps of progress."""

    def set_postfix(self, **kwargs: Any) -> None:
        """Ignore the postfix ``kwargs``."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> SilentBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool, **options: Any) -> Any:
    """A tqdm bar (``tqdm.auto``, ``leave=False``, ``dynamic_ncols=True``) when ``enabled``, else a
    :class:`SilentBar`.

    Parameters
    ----------
    iterable : iterable, optional
        What the bar iterates over.
    enabled : bool
        Show the bar.
    **options
        tqdm's keywords (``total``, ``desc``, ``unit``, ...); ignored when not enabled.

    Returns
    -------
    tqdm.auto.tqdm or SilentBar
        Supports iteration, ``update``, ``set_postfix``, ``close`` and ``with``.
    """
    if not enabled:
        return SilentBar(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, **{"leave": False, "dynamic_ncols": True, **options})
