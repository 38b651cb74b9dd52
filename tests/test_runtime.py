"""sbnnumba.runtime.retain_freed_memory: large arrays come from the heap (no mmap) once applied.

Each check runs in a fresh interpreter: the setting is process-wide and must not leak into the test
session. glibc's ``mallinfo2().hblkhd`` (bytes held in mmapped blocks) tells where a 64 MB array lives.
"""
import json
import os
import subprocess
import sys

import pytest

import sbnnumba as sb
from sbnnumba import runtime

glibc_only = pytest.mark.skipif(runtime._glibc() is None or not hasattr(runtime._glibc(), "mallinfo2"),
                                reason="mallopt/mallinfo2 are glibc (>= 2.33) functions")

PROBE = r"""
import ctypes, ctypes.util, json, sys
import numpy as np
import sbnnumba as sb
from sbnnumba import runtime

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
state = runtime.retain_freed_memory() if sys.argv[1] == "retain" else "default"
before = libc.mallinfo2().hblkhd
a = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, above glibc's largest mmap threshold (32 MiB)
during = libc.mallinfo2().hblkhd
arena_with = libc.mallinfo2().arena
del a
b = np.ones(64 * 2 ** 20 // 8)  # the same size again: reuses the freed block when retained
arena_again = libc.mallinfo2().arena
print(json.dumps({"state": state, "mmapped": during - before, "arena_growth": arena_again - arena_with}))
"""


def _probe(mode, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in runtime.MALLOC_ENV_SETTINGS}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=full_env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc_only
def test_default_malloc_maps_large_arrays():
    row = _probe("default")
    assert row["mmapped"] >= 64 * 2 ** 20  # the premise: without the setting, a 64 MiB array is its own mmap


@glibc_only
def test_retain_serves_large_arrays_from_the_heap_and_reuses_them():
    row = _probe("retain")
    assert row["state"] == "applied"
    assert row["mmapped"] == 0  # from the heap, not a fresh mapping
    assert row["arena_growth"] == 0  # the freed 64 MiB were kept and served the next array


@glibc_only
def test_a_malloc_setting_in_the_environment_wins():
    row = _probe("retain", MALLOC_MMAP_MAX_="65536")
    assert row["state"] == "environment"
    assert row["mmapped"] >= 64 * 2 ** 20  # nothing was changed


def test_set_num_threads_sets_numba_and_blas():
    import numba
    from threadpoolctl import threadpool_info

    before = sb.get_num_threads()
    try:
        sb.set_num_threads(1)
        assert numba.get_num_threads() == 1 == sb.get_num_threads()
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
    finally:
        sb.set_num_threads(before)
    assert numba.get_num_threads() == before


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (10 ** 6, ValueError), (1.0, TypeError), (True, TypeError)])
def test_set_num_threads_rejects_bad_counts(bad, exc):
    with pytest.raises(exc, match="^n: expected"):
        sb.set_num_threads(bad)
