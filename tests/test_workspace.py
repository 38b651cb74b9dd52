"""Per-thread scratch buffers (sbnnumba.kernels.workspace)."""
import threading

import numpy as np

from sbnnumba.kernels import workspace


def test_scratch_buffers_are_reused_per_name_and_thread():
    a = workspace.scratch("test-a", (3, 5), np.float32)
    assert a.shape == (3, 5) and a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % 64 == 0
    b = workspace.scratch("test-a", (2, 3), np.float64)  # the same buffer, reinterpreted (48 <= 60 bytes)
    assert b.ctypes.data == a.ctypes.data
    assert workspace.scratch("test-b", (3, 5), np.float32).ctypes.data != a.ctypes.data
    big = workspace.scratch("test-a", (1000, 100), np.float64)  # grows
    assert big.shape == (1000, 100) and big.ctypes.data % 64 == 0
    other = []

    def in_thread():
        other.append(workspace.scratch("test-a", (3, 5), np.float32).ctypes.data)

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert other[0] != workspace.scratch("test-a", (3, 5), np.float32).ctypes.data  # per thread


def test_scratch_returns_the_last_array_for_the_same_request_and_a_new_view_otherwise():
    a = workspace.scratch("test-repeat", (4, 6), np.float32)
    assert workspace.scratch("test-repeat", (4, 6), np.float32) is a
    assert workspace.scratch("test-repeat", (4, 6), np.dtype(np.float32)) is a  # a dtype or its type: one request
    c = workspace.scratch("test-repeat", (6, 4), np.float32)  # another shape: a new view of the same buffer
    assert c is not a and c.shape == (6, 4) and c.ctypes.data == a.ctypes.data
    d = workspace.scratch("test-repeat", (6, 4), np.int32)
    assert d is not c and d.dtype == np.int32
    grown = workspace.scratch("test-repeat", (600, 400), np.float32)  # a larger buffer: never the old array
    assert grown.shape == (600, 400) and workspace.scratch("test-repeat", (6, 4), np.int32) is not d


def test_scratch_honours_the_alignment_and_shape():
    for align in (16, 64, 4096):
        s = workspace.scratch(f"align-{align}", (7, 3), np.int8, align=align)
        assert s.ctypes.data % align == 0 and s.shape == (7, 3) and s.dtype == np.int8


def test_aligned_empty_is_a_new_aligned_array_each_call():
    a = workspace.aligned_empty((5, 7), np.float32, align=64)
    b = workspace.aligned_empty((5, 7), np.float32, align=64)
    assert a.shape == (5, 7) and a.dtype == np.float32 and a.flags.c_contiguous
    assert a.ctypes.data % 64 == 0 and b.ctypes.data % 64 == 0 and a.ctypes.data != b.ctypes.data


def test_spread_rows_take_an_odd_number_of_whole_cache_lines():
    for itemsize in (4, 8):
        per_line = 64 // itemsize
        for n in (1, 10, 15, 16, 17, 784, 1000, 1024, 2048, 4096 // itemsize):
            length = workspace.spread_row_length(n, itemsize)
            lines = length // per_line
            assert length >= n and length % per_line == 0 and lines % 2 == 1, (n, itemsize, length)
            assert length - n < 2 * per_line  # at most one line beyond the whole lines n needs
    # rows of 1024 float32 (4 KiB apart, one cache set) get one more line
    assert workspace.spread_row_length(1024, 4) == 1040
    assert workspace.spread_row_length(1000, 4) == 1008  # 63 lines: already odd
