"""Explicit SIMD lanes for float sums whose order the source fixes (Numba CPU kernels).

A kernel compiled with ``fastmath``'s ``reassoc`` lets LLVM choose the order of a float sum: it vectorizes
``s += t[j]`` into several partial sums and combines them in whatever order its passes leave. Those passes
do not run the same number of times on every path: Numba compiles the body of a ``prange`` loop into its own
library, optimizes it, then links that optimized code into the caller's library and optimizes it again. The
process that compiles the kernel runs the first copy; the object code written to Numba's on-disk cache (and
run by every process that loads it) is the second, where ``reassoc`` let the optimizer rebalance the
combination of the partial sums (``((s0 + s1) + s2) + s3`` became ``(s0 + s1) + (s2 + s3)``). The same
kernel then gave different float bits when compiled than when loaded from the cache.

Without ``reassoc`` every sum is evaluated in the order written, whatever the optimizer does, but LLVM no
longer vectorizes a float reduction. :func:`zeros` gives a kernel a small array of ``LANES`` accumulators on
the stack (promoted to registers by LLVM): a loop ``for l in range(LANES): acc[l] += t[j0 + l]`` is an
element-wise update that LLVM vectorizes without reordering anything, and :func:`total` adds the lanes in
one fixed tree order. ``LANES = 32`` (two AVX-512 or four AVX2 registers per sum) keeps enough independent
sums in flight to hide the add latency.

Under ``NUMBA_DISABLE_JIT=1`` :func:`zeros` is a NumPy array of the same dtype (its twin), so the kernels that use
it run as Python, adding in the same order.
"""
import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 32


@intrinsic
def _zeros_llvm(typingctx, one):
    """A zeroed C-contiguous array of ``LANES`` values of ``one``'s float type, on the stack of the caller.

    Parameters
    ----------
    one : float32 or float64 scalar
        Gives the dtype (its value is not used).

    Returns
    -------
    1-d array (LANES,)
        Valid until the calling kernel returns (no reference counting: never return or store it).
    """
    if not isinstance(one, types.Float):
        raise TypeError(f"lanes.zeros: expected a float scalar, got {one}")
    array_type = types.Array(one, 1, "C")

    def codegen(context, builder, signature, args):
        value_type = context.get_value_type(one)
        # in the entry block, so that LLVM can promote the lanes to registers
        ptr = cgutils.alloca_once(builder, value_type, size=LANES)
        zero = context.get_constant(one, 0)
        for lane in range(LANES):
            builder.store(zero, builder.gep(ptr, [context.get_constant(types.intp, lane)]))
        array = context.make_array(array_type)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(value_type))
        context.populate_array(array, data=ptr, shape=[context.get_constant(types.intp, LANES)],
                               strides=[itemsize], itemsize=itemsize, meminfo=None)
        return array._getvalue()

    return array_type(one), codegen


def _zeros_python(one):
    """:func:`_zeros_llvm` in NumPy (the twin under ``NUMBA_DISABLE_JIT=1``): ``LANES`` zeros of ``one``'s dtype."""
    dtype = np.asarray(one).dtype
    if dtype.kind != "f":
        raise TypeError(f"lanes.zeros: expected a float scalar, got {one!r}")
    return np.zeros(LANES, dtype=dtype)


zeros = _zeros_python if numba.config.DISABLE_JIT else _zeros_llvm


@numba.njit(inline="always")
def total(acc):
    """The sum of the ``LANES`` accumulators in a fixed tree order (lane ``l`` and ``l + w`` for
    ``w = LANES/2, ..., 1``); ``acc`` is overwritten.

    Parameters
    ----------
    acc : 1-d float array (LANES,)

    Returns
    -------
    float
    """
    width = LANES // 2
    while width > 0:
        for lane in range(width):
            acc[lane] += acc[lane + width]
        width //= 2
    return acc[0]
