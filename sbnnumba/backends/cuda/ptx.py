r"""Compile every numba.cuda kernel of the ``cuda`` backend to PTX for a real GPU (sm_80), no device needed.

numba's CUDA simulator runs kernels as Python and so cannot catch typing or code-generation errors
of the real target; this check can (it needs libNVVM, shipped with numba-cuda's CUDA toolkit wheels,
but no GPU). It must run in a process without ``NUMBA_ENABLE_CUDASIM``:

    python -m sbnnumba.backends.cuda.ptx            # exit 0: all compiled; 1: a kernel failed;
                                                    # 3: cannot compile PTX here (the reason is printed)

``tests/test_cuda.py`` runs it in a subprocess (the test process itself runs the simulator).
Each kernel is compiled with the argument types the wrappers of :mod:`.ops` and the device step pass.
"""
import sys

import numpy as np

SKIPPED = 3  # exit code when PTX cannot be compiled here


def ptx_checks():
    """One check per kernel: compile it for sm_80 with the argument types the wrappers pass."""
    import numba
    from numba import cuda
    from numba.cuda.random import xoroshiro128p_dtype

    from . import gemm as kg
    from . import kernels as k
    from . import layer_kernels as lk
    from . import train_kernels as kt

    states = numba.typeof(np.empty(1, xoroshiro128p_dtype))

    def sig(*args):
        return tuple(numba.typeof(np.empty((1,) * t[0], t[1])) if isinstance(t, tuple) else numba.typeof(t)
                     for t in args)

    # Device functions called by a kernel (the register_jitable noise scalars) are compiled for "the
    # current device"; without one, pretend it is sm_80 (compile_ptx itself takes cc explicitly).
    import numba.cuda.dispatcher as dispatcher

    class _Sm80:
        compute_capability = (8, 0)

    dispatcher.get_current_device = lambda: _Sm80()

    checks = {}
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        f1, f2, f4 = (1, dt), (2, dt), (4, dt)
        one = dt(1)
        checks[f"ptx_dense_ratio_{name}"] = (k.dense_flip_ratio_kernel(name, **k.DENSE_TILE),
                                             sig(f2, f2, f2, f2, f1, f2))
        checks[f"ptx_dense_generic_{name}"] = (k.dense_flip_generic_kernel(name, **k.DENSE_TILE),
                                               sig(0, f2, f2, f2, f2, f2, f2))
        checks[f"ptx_conv_ratio_{name}"] = (k.flip_conv_ratio, sig(f4, f4, f4, (3, dt), f4, 1, 1, 1, 1, one, f4))
        checks[f"ptx_conv_generic_{name}"] = (k.flip_conv_generic, sig(0, f4, f4, f4, f4, f4, f4, f4, 1, 1, 1, 1, f4))
        checks[f"ptx_units_{name}"] = [(k.ratio_units, sig(f1, f1, f1, one, f1, 1, one, f1, f1, f1, f1, (1, np.int32))),
                                       (k.reach_rows, sig(f2, f1)),
                                       (k.generic_units, sig(0, f1, f1, f1, f1, f1)),
                                       (k.exp2, sig(f1, one, f1)), (k.exp2_transpose, sig(f2, one, f2)),
                                       (k.sum_axis1, sig((3, dt), f2)), (k.add_into, sig(f1, f1))]
        checks[f"ptx_elementwise_{name}"] = [(k.sample_states, sig(0, f1, f1, f1)), (k.st_factor, sig(0, f1, f1)),
                                             (k.psa_preactivation_grad, sig(0, f1, f1, f1, f1))]
        f3, i1 = (3, dt), (1, np.int32)
        checks[f"ptx_gemm_{name}"] = [(kg.gemm_kernel(name, ta, tb, **kg.GEMM_TILES), sig(f2, f2, one, one, f2))
                                     for ta, tb in ((False, True), (True, False), (False, False))]
        checks[f"ptx_train_step_{name}"] = [
            (kt.add_bias, sig(f2, f1)),
            (kt.sample_rng, (numba.int64, numba.typeof(np.empty((1, 1), dt)), states, numba.typeof(np.empty((1, 1), dt)))),
            (kt.column_sum, sig(f2, one, f1)), (kt.xent_rows, sig(f2, i1, f1, f2)),
            (kt.head_flips, sig(f2, i1, f2, f2, f1, f2, f3)), (kt.rb_weights, sig(0, f2, f2, f2, f1, f2, f1, f1)),
            (kt.rb_mix, sig(f2, f3, f2, f1, one, f2)), (kt.rb_head_correction, sig(f3, f2, f2, one, f2)),
            (kt.st_grad, sig(0, f2, f2, f2)),
            (kt.adam_update, sig(f1, f1, f1, f1, one, one, one, one, one, one, one, one, one, one)),
            (kt.sgd_update, sig(f1, f1, f1, one, one, True, True, one, one)),
            (kt.gather_rows, sig(f2, (1, np.int64), 0, f2)), (kt.gather_labels, sig(i1, (1, np.int64), 0, i1)),
            (kt.accumulate_loss, sig(f1, 1.0, (1, np.float64))),
            (kt.im2col_rows, sig(f4, 3, 3, 1, 1, 1, 1, f2)), (kt.col2im_gather, sig(f2, 3, 3, 1, 1, 1, 1, f4)),
            (kt.rows_to_map, sig(f2, f1, True, f4)), (kt.map_to_rows, sig(f4, f2))]
        d1 = (1, np.float64)
        checks[f"ptx_train_binary_{name}"] = [
            (kt.channel_sums_kernel(kt.REDUCE_THREADS), sig(f1, f1, 1, 1, 1, d1, d1)),
            (kt.bn_statistics, sig(d1, d1, 1.0, 1.0, 1.0, f1, f1, f1, f1, f1, f1)),
            (kt.bn_apply, sig(f1, f1, f1, f1, f1, 1, 1, f1, f1)),
            (kt.bn_backward, sig(f1, f1, d1, d1, f1, 1.0, 1, 1, f1)),
            (kt.scale_copy, sig(d1, 1.0, f1)), (kt.scale_rows, sig(f2, f1, f2)),
            (kt.latent_grad, sig(0, True, f1, f1, f1)),
            (kt.clip_values, sig(f1, one))]
        # the training-step operations (layer_ops): their own kernels, and bn_backward on working-dtype sums
        checks[f"ptx_layer_ops_{name}"] = [
            (lk.fill, sig(f1, one)), (lk.multiply, sig(f1, f1, f1)), (lk.moments, sig(d1, d1, 1.0, f1, f1)),
            (lk.running_average, sig(f1, f1, one, f1)), (lk.inv_std, sig(f1, 1.0, f1)),
            (lk.scale_channels, sig(f1, f1, 1, 1, f1)), (lk.flip_weights, sig(0, f2, f2, f2)),
            (lk.rb_value, sig(f1, f2, f2, f1)), (lk.weighted_sum, sig(f1, f1, f1)),
            (kt.bn_backward, sig(f1, f1, f1, f1, f1, 1.0, 1, 1, f1))]
    checks["ptx_zero_counter"] = (k.zero_counter, sig((1, np.int32)))
    u2, u4, i2, i4 = (2, np.uint64), (4, np.uint64), (2, np.int32), (4, np.int32)
    checks["ptx_xnor_gemm"] = (k.xnor_gemm_kernel(**k.GEMM_TILE), sig(u2, u2, 70, i2))
    checks["ptx_xnor_gemm_threshold"] = (k.xnor_gemm_threshold_kernel(**k.GEMM_THRESHOLD_TILE),
                                         sig(u2, u2, 70, (1, np.int64), (1, np.uint8), u2))
    checks["ptx_binary_conv"] = [(k.xnor_conv2d, sig(u4, u4, 3, 1, 1, 1, 1, i4)),
                                 (k.sign_pack_channels, sig(i4, (1, np.int64), (1, np.uint8), u4))]

    def make(items):
        items = items if isinstance(items, list) else [items]

        def run():
            for kernel, signature in items:
                ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(8, 0), fastmath=True)
                if ".entry" not in ptx:
                    raise AssertionError("no kernel entry in the PTX")
                if "popc" in kernel.py_func.__code__.co_names and "popc.b64" not in ptx:
                    raise AssertionError("expected 64-bit popcounts (popc.b64) in the PTX")
        return run

    return {name: make(items) for name, items in checks.items()}


def ptx_toolchain_missing():
    """Why no PTX can be compiled here (no libNVVM / NVRTC), or None: a trivial kernel that calls a
    register_jitable scalar, compiled like the real ones, must succeed."""
    import numba
    from numba import cuda

    from ...kernels.scalar import cdf

    def probe(a, out):
        i = cuda.grid(1)
        if i < a.shape[0]:
            out[i] = cdf(0, a[i])

    try:
        ptx_checks()  # installs the sm_80 stand-in for "the current device"
        t = numba.typeof(np.empty(1, np.float32))
        cuda.compile_ptx(probe, (t, t), cc=(8, 0))
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return None


def main():
    """Compile every kernel; print one line per check; return the exit code (0, 1 or :data:`SKIPPED`)."""
    import numba
    if numba.config.ENABLE_CUDASIM:
        print("PTX checks must run without NUMBA_ENABLE_CUDASIM", file=sys.stderr)
        return 2
    try:
        from numba import cuda  # noqa: F401
    except ImportError as exc:
        print(f"SKIP numba.cuda cannot be imported: {exc}")
        return SKIPPED
    reason = ptx_toolchain_missing()
    if reason:
        print(f"SKIP cannot compile PTX here: {reason}")
        return SKIPPED
    failed = 0
    for name, run in ptx_checks().items():
        try:
            run()
            print(f"ok   {name}")
        except Exception as exc:  # report every kernel, not only the first failure
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
