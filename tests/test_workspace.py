"""Per-thread scratch arrays (sbnnumba.kernels.workspace)."""
import threading

import numpy as np

from sbnnumba.kernels import workspace


def test_scratch_reuses_by_name_shape_and_dtype():
    a = workspace.scratch("t1", (3, 4), np.float32)
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.flags.c_contiguous
    assert workspace.scratch("t1", (3, 4), np.float32) is a
    assert workspace.scratch("t2", (3, 4), np.float32) is not a
    assert workspace.scratch("t1", (4, 3), np.float32) is not a
    assert workspace.scratch("t1", (3, 4), np.float64) is not a


def test_scratch_keeps_at_most_max_arrays_oldest_dropped():
    first = workspace.scratch("old", (2,), np.int64)
    for i in range(workspace.MAX_ARRAYS):
        workspace.scratch(f"other{i}", (2,), np.int64)
    assert len(workspace._ARRAYS.arrays) == workspace.MAX_ARRAYS
    assert workspace.scratch("old", (2,), np.int64) is not first


def test_scratch_is_per_thread():
    mine = workspace.scratch("thread", (5,), np.float32)
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(workspace.scratch("thread", (5,), np.float32)))
    worker.start()
    worker.join()
    assert theirs[0] is not mine
