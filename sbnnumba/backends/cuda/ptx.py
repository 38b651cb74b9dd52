r"""Compile every numba.cuda kernel of the ``cuda`` backend to PTX for a real GPU (sm_80), no device needed.

numba's CUDA simulator runs kernels as Python and so cannot catch typing or code-generation errors
of the real target; this check can (it needs libNVVM, shipped with numba-cuda's CUDA toolkit wheels,
but no GPU). It must run in a process without ``NUMBA_ENABLE_CUDASIM``:

    python -m sbnnumba.backends.cuda.ptx              # exit 0: all compiled; 1: a kernel failed;
                                                      # 3: cannot compile PTX here (the reason is printed)
    python -m sbnnumba.backends.cuda.ptx --resources  # also: registers, stack, spills and shared memory
                                                      # of the hot kernels, from ptxas -v (sm_90)

``--resources`` assembles the PTX of the performance-critical kernels (:data:`RESOURCE_CHECKS`: the
GEMM, the dense and conv PSA flip kernels) with the CUDA toolkit's ``ptxas`` for sm_90 (H100/H200)
and prints its figures, one line per kernel; without ``ptxas`` on the PATH it says so and skips them.

``tests/test_cuda.py`` runs it in a subprocess (the test process itself runs the simulator).
Each kernel is compiled with the argument types the wrappers of :mod:`.ops` and the device step pass.
"""
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SKIPPED = 3  # exit code when PTX cannot be compiled here
#: Checks whose kernels ``--resources`` assembles with ptxas (name prefixes of :func:`ptx_checks`).
RESOURCE_CHECKS = ("ptx_gemm_", "ptx_dense_ratio_", "ptx_dense_generic_", "ptx_conv_ratio_")
RESOURCE_ARCH = "sm_90"


def ptx_checks():
    """One check per kernel (or group of kernels): compile it for sm_80 with the argument types the wrappers pass.

    Returns
    -------
    dict
        ``{check name: run}``; ``run()`` compiles the check's kernels, raises ``AssertionError`` when the
        PTX lacks what it must contain, and returns ``[(kernel name, ptx text), ...]``.
    """
    import numba
    from numba import cuda
    from numba.cuda.random import xoroshiro128p_dtype

    from . import conv_flip as kc
    from . import dense_flip as kd
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
        checks[f"ptx_dense_ratio_{name}"] = (kd.dense_flip_ratio_kernel(name, **kd.DENSE_TILE),
                                             sig(f2, f2, f2, f2, f1, f2))
        checks[f"ptx_dense_generic_{name}"] = [
            (kd.dense_flip_generic_kernel(name, **kd.DENSE_TILE), sig(0, f2, f2, f2, f2, f2, f2)),
            (kd.dense_flip_generic_kernel(name, gated=True, **kd.DENSE_TILE),
             sig(0, f2, f2, f2, f2, f2, (1, np.int32), f2))]
        checks[f"ptx_conv_ratio_{name}"] = [
            (kc.flip_conv_ratio_kernel(name, kh, kw, **kc.CONV_TILES), sig(f4, f4, f4, (3, dt), f4, 1, 1, 1, 1, f4))
            for kh, kw in ((3, 3), (1, 1))]
        checks[f"ptx_conv_generic_{name}"] = [
            (k.flip_conv_generic, sig(0, f4, f4, f4, f4, f4, f4, f4, 1, 1, 1, 1, f4)),
            (k.flip_conv_generic_gated, sig(0, f4, f4, f4, f4, f4, f4, f4, 1, 1, 1, 1, (1, np.int32), f4))]
        checks[f"ptx_units_{name}"] = [(k.ratio_units, sig(f1, f1, f1, one, f1, 1, one, f1, f1, f1, f1, (1, np.int32))),
                                       (k.reach_rows, sig(f2, f1)),
                                       (k.generic_units, sig(0, f1, f1, f1, f1, f1)),
                                       (k.exp2, sig(f1, one, f1)), (k.exp2_transpose, sig(f2, one, f2)),
                                       (k.sum_axis1, sig((3, dt), f2))]
        checks[f"ptx_elementwise_{name}"] = [(k.sample_states, sig(0, f1, f1, f1)),
                                             (k.st_preactivation_grad, sig(0, f1, f1, f1)),
                                             (k.psa_preactivation_grad, sig(0, f1, f1, f1, f1))]
        f3, i1 = (3, dt), (1, np.int32)
        checks[f"ptx_gemm_{name}"] = [(kg.gemm_kernel(name, ta, tb, **kg.GEMM_TILES), sig(f2, f2, one, one, f2))
                                     for ta, tb in ((False, True), (True, False), (False, False))]
        checks[f"ptx_train_step_{name}"] = [
            (kt.add_bias, sig(f2, f1)),
            (kt.sample_rng, (numba.int64, numba.typeof(np.empty((1, 1), dt)), states,
                             numba.typeof(np.empty((1, 1), dt)))),
            (kt.column_sum, sig(f2, one, f1)), (kt.xent_rows, sig(f2, i1, f1, f2)),
            (kt.head_flips, sig(f2, i1, f2, f2, f1, f2, f3)),
            (kt.rb_mix, sig(f2, f3, f2, f1, one, f2)), (kt.rb_head_correction, sig(f3, f2, f2, one, f2)),
            (kt.adam_update, sig(f1, f1, f1, f1, one, one, one, one, one, one, one, one, one, one)),
            (kt.sgd_update, sig(f1, f1, f1, one, one, True, True, one, one)),
            (kt.gather_rows, sig(f2, (1, np.int64), 0, f2)), (kt.gather_labels, sig(i1, (1, np.int64), 0, i1)),
            (kt.accumulate_loss, sig(f1, 1.0, (1, np.float64))),
            (kt.im2col_rows, sig(f4, 3, 3, 1, 1, 1, 1, f2)), (kt.col2im_gather, sig(f2, 3, 3, 1, 1, 1, 1, f4)),
            (kt.rows_to_map, sig(f2, f1, True, f4)), (kt.map_to_rows, sig(f4, f2))]
        d1 = (1, np.float64)
        checks[f"ptx_train_binary_{name}"] = [
            (kt.channel_sums_kernel(kt.REDUCE_THREADS), sig(f1, f1, 1, 1, 1, d1, d1)),
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
            out = []
            for kernel, signature in items:
                ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(8, 0), fastmath=True)
                if ".entry" not in ptx:
                    raise AssertionError("no kernel entry in the PTX")
                if "popc" in kernel.py_func.__code__.co_names and "popc.b64" not in ptx:
                    raise AssertionError("expected 64-bit popcounts (popc.b64) in the PTX")
                out.append((f"{kernel.py_func.__qualname__.split('.')[0]}#{len(out)}", ptx))
            return out
        return run

    return {name: make(items) for name, items in checks.items()}


def ptx_toolchain_missing():
    """Why no PTX can be compiled here (no libNVVM / NVRTC), or None.

    A trivial kernel that calls a register_jitable scalar, compiled like the real ones, must succeed.

    Returns
    -------
    str or None
        The reason (exception type and message, shortened), or None when PTX compiles.
    """
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


def ptxas_resources(ptx, arch=RESOURCE_ARCH):
    """Registers, stack, spills and shared memory of one kernel's PTX, from ``ptxas -v``.

    Parameters
    ----------
    ptx : str
        PTX text of one kernel (as :func:`ptx_checks` returns it).
    arch : str
        ``--gpu-name`` for ptxas (default sm_90: H100/H200).

    Returns
    -------
    dict or None
        ``{"registers", "stack", "spill_stores", "spill_loads", "smem"}`` (ints; bytes except registers), or
        None when ``ptxas`` is not on the PATH.

    Raises
    ------
    RuntimeError
        When ptxas fails or prints no resource line.
    """
    exe = shutil.which("ptxas")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run([exe, "-v", "--gpu-name", arch, str(src), "-o", str(Path(tmp) / "kernel.cubin")],
                              capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    fields = {"registers": r"Used (\d+) registers", "stack": r"(\d+) bytes stack frame",
              "spill_stores": r"(\d+) bytes spill stores", "spill_loads": r"(\d+) bytes spill loads",
              "smem": r"(\d+) bytes smem"}
    found = {key: re.search(pattern, text) for key, pattern in fields.items()}
    if proc.returncode != 0 or found["registers"] is None:
        raise RuntimeError(f"ptxas: expected resource usage, got exit {proc.returncode}: "
                           f"{' '.join(text.split())[:300]}")
    return {key: int(m.group(1)) if m else 0 for key, m in found.items()}


def main(argv=None):
    """Compile every kernel; print one line per check (and per hot kernel with ``--resources``).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``): ``--resources`` adds the ptxas figures.

    Returns
    -------
    int
        The exit code: 0, 1 (a kernel failed) or :data:`SKIPPED`.
    """
    import numba
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv not in ([], ["--resources"]):
        print(f"usage: python -m sbnnumba.backends.cuda.ptx [--resources]; got {argv}", file=sys.stderr)
        return 2
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
    resources = argv == ["--resources"]
    if resources and shutil.which("ptxas") is None:
        print("SKIP resources: ptxas (CUDA toolkit) is not on the PATH")
        resources = False
    failed = 0
    for name, run in ptx_checks().items():
        try:
            compiled = run()
            print(f"ok   {name}")
            if resources and name.startswith(RESOURCE_CHECKS):
                for kernel, ptx in compiled:
                    r = ptxas_resources(ptx)
                    print(f"res  {name} {kernel} {RESOURCE_ARCH}: {r['registers']} registers, {r['stack']} bytes "
                          f"stack, spill stores {r['spill_stores']} loads {r['spill_loads']} bytes, "
                          f"{r['smem']} bytes smem")
        except Exception as exc:  # report every kernel, not only the first failure
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
