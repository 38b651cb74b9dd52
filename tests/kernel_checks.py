"""Helpers shared by the packed-kernel tests: a pure-Python (no JIT) run and the CPU's popcount support."""
import os
import subprocess
import sys
import textwrap


def run_without_jit(script):
    """Run ``script`` (dedented) in a child Python with ``NUMBA_DISABLE_JIT=1``; assert it prints ``ok``."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def has_avx512_vpopcntdq():
    """True when /proc/cpuinfo lists AVX-512 VPOPCNTDQ (the vector popcount the kernels should emit)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vpopcntdq" in f.read()
    except OSError:
        return False


def stdout_at_threads(script, threads, *args):
    """Run ``script`` (dedented) in a child Python with ``NUMBA_NUM_THREADS=threads`` and ``args`` as
    ``sys.argv[1:]``; assert it succeeds and return its stripped stdout (e.g. a digest of kernel results,
    to check that they do not depend on the thread count)."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
