"""Helpers shared by the kernel and packed-network tests: a pure-Python (no JIT) run, the CPU's popcount support,
a call at one and at two Numba threads, and random normalization parameters that exercise every threshold case."""
import os
import subprocess
import sys
import textwrap


def run_without_jit(script, *args, timeout=120):
    """Run ``script`` (dedented) in a child Python with ``NUMBA_DISABLE_JIT=1`` and ``args`` as ``sys.argv[1:]``;
    assert it prints ``ok``."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def has_avx512_vpopcntdq():
    """True when /proc/cpuinfo lists AVX-512 VPOPCNTDQ (the vector popcount the kernels should emit)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vpopcntdq" in f.read()
    except OSError:
        return False


def stdout_at_threads(script, threads, *args, env=None):
    """Run ``script`` (dedented) in a child Python with ``NUMBA_NUM_THREADS=threads``, the variables ``env``
    (dict) added to the environment and ``args`` as ``sys.argv[1:]``; assert it succeeds and return its
    stripped stdout (e.g. a digest of kernel results, to check that they do not depend on the thread count)."""
    env = dict(os.environ, **(env or {}), NUMBA_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def vector_width_targets():
    """The Numba targets the cache checks compile for: ``{name: environment}``.

    On an x86-64 CPU with AVX-512, the features Numba compiles for (:func:`sbnnumba.runtime.compile_target`) with
    256-bit vectors preferred and with 512-bit ones (LLVM's
    ``prefer-256-bit`` tuning, set by ``NUMBA_CPU_FEATURES``): Intel's server targets prefer 256 bits, AMD's
    ``znver4`` 512, and a kernel whose bits depend on how LLVM vectorizes can fail at one width only (the dense ratio
    flip of 31 outputs in float64 did at 256 bits, 2026-12-05). Elsewhere the host's own target.
    """
    from sbnnumba.runtime import compile_target

    features = compile_target()[1]
    if "+avx512f" not in features.split(","):
        return {"host": {}}
    return {"256-bit": {"NUMBA_CPU_FEATURES": features + ",+prefer-256-bit"},
            "512-bit": {"NUMBA_CPU_FEATURES": features + ",-prefer-256-bit"}}


def assert_same_output_compiled_and_cached(script, cache_dir, threads=2, env=None):
    """Run ``script`` twice in child Pythons (:func:`stdout_at_threads`) sharing the empty Numba cache ``cache_dir``:
    the first compiles its kernels, the second loads them. ``script`` prints ``digest hits misses`` (a digest of
    kernel results, and the cache hits and misses of the kernels it checks); assert that the first only compiled,
    the second only loaded, and both printed the same digest (Numba optimizes a prange body twice and caches the
    second result, so a kernel whose sums LLVM may reassociate can give other bits once loaded). ``env``: more
    environment variables of both children (a target of :func:`vector_width_targets`)."""
    env = {**(env or {}), "NUMBA_CACHE_DIR": str(cache_dir)}
    compiled = stdout_at_threads(script, threads, env=env).split()
    loaded = stdout_at_threads(script, threads, env=env).split()
    assert int(compiled[1]) == 0 and int(compiled[2]) > 0, compiled  # compiled, nothing loaded
    assert int(loaded[1]) > 0 and int(loaded[2]) == 0, loaded  # everything loaded from the cache
    assert compiled[0] == loaded[0]


def randomize_normalization(net, rng, zero_gammas=True):
    """Random gammas (both signs, a few exactly 0), betas and deterministic-mode running statistics."""
    for norm in net.normalizations():
        n = norm.gamma.size
        norm.gamma[:] = rng.normal(size=n) * rng.choice([0.1, 1.0, 10.0], size=n)
        if zero_gammas:
            norm.gamma[:2] = 0
            norm.beta[:2] = [0.5, -0.5]
        norm.beta[2:] = rng.normal(scale=0.5, size=n - 2)
        mean, var = norm.running["deterministic"]
        norm.running["deterministic"] = ((mean + rng.normal(scale=2.0, size=n)).astype(mean.dtype),
                                         (var * rng.uniform(0.2, 5.0, size=n)).astype(var.dtype))


def at_one_and_two_threads(call):
    """``(call() at one Numba thread, call() at two)`` (two where Numba has them), the thread count restored after."""
    import numba

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = call()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        return one, call()
    finally:
        numba.set_num_threads(before)
