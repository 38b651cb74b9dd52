"""Shared benchmark helpers: machine description and robust timing of contenders in one run.

Benchmarks compare contenders measured in the *same* run, interleaved round-robin (so a noisy
neighbour or a frequency change hits every contender alike), and report medians.
"""
import contextlib
import os
import platform
import statistics
import time

import numpy as np

OPENBLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_ENV_VARS = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")  # set by sbnnumba before NumPy loads


def _cpuinfo_field(key, default):
    """The first ``key`` line's value in /proc/cpuinfo (Linux), else ``default``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def _cpu_model():
    return _cpuinfo_field("model name", platform.processor() or platform.machine())


def _cpu_vendor():
    return _cpuinfo_field("vendor_id", "unknown vendor")


def _cpu_flags():
    return set(_cpuinfo_field("flags", "").split())


def machine_info(print_it=True):
    """Describe the machine and the numerical stack; print it (unless ``print_it=False``) and return it.

    Returns
    -------
    dict
        ``cpu``, ``vendor``, ``numba_target`` (the CPU Numba compiles for), ``cores`` (logical CPUs usable by this
        process), ``avx512_vpopcntdq``, ``python``,
        ``numpy``, ``numba``, ``numba_threads``, ``blas`` (list of dicts from threadpoolctl:
        ``internal_api``, ``architecture`` (the OpenBLAS kernel), ``num_threads``, ``version``), and
        ``env`` (values of OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, ``None`` when unset) and
        ``load_average`` (1-minute; other processes on the machine distort parallel timings).
    """
    import numba
    from threadpoolctl import threadpool_info

    from sbnnumba.runtime import compile_target

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    blas = [
        {key: entry.get(key) for key in ("internal_api", "architecture", "num_threads", "version")}
        for entry in threadpool_info() if entry.get("user_api") == "blas"
    ]
    info = {
        "cpu": _cpu_model(),
        "vendor": _cpu_vendor(),
        "numba_target": compile_target()[0],
        "cores": cores,
        "avx512_vpopcntdq": "avx512_vpopcntdq" in _cpu_flags(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "blas": blas,
        "env": {name: os.environ.get(name) for name in OPENBLAS_ENV_VARS + THREAD_ENV_VARS},
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if print_it:
        print(f"CPU: {info['cpu']} ({info['vendor']}, Numba target {info['numba_target']}), {info['cores']} cores, "
              f"AVX-512 VPOPCNTDQ: {info['avx512_vpopcntdq']}")
        print(f"Python {info['python']}, numpy {info['numpy']}, numba {info['numba']} "
              f"({info['numba_threads']} threads)")
        for entry in blas or [{"internal_api": "unknown (threadpoolctl found no BLAS)"}]:
            print(f"BLAS: {entry.get('internal_api')} {entry.get('version') or ''}, "
                  f"kernel/architecture {entry.get('architecture')}, threads {entry.get('num_threads')}")
        print("env: " + ", ".join(f"{k}={'(unset)' if v is None else v}" for k, v in info["env"].items())
              + f"; load average (1 min) before the run: {info['load_average']}")
    return info


def median_time(fn, repeats):
    """Median wall time (seconds) of ``repeats`` calls of ``fn()`` (warm up before calling this)."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(contenders, repeats, settle=0.0, prepare=None):
    """Median wall time (seconds) per contender, timing them round-robin.

    Parameters
    ----------
    contenders : dict[str, callable]
        Name -> zero-argument function (warm up / compile before calling this).
    repeats : int
        Rounds; each round times every contender once, in an order rotated by one each round.
    settle : float, default 0
        Before each timed call, call the contender untimed, repeatedly for at least ``settle``
        seconds. Thread pools keep spinning for a while after a parallel call (libgomp, behind
        Numba's ``omp`` layer, for tens of ms; OpenBLAS workers too) and steal cores from the next
        contender, while a pool left idle for long may be slow to wake (notably in VMs); settling
        times each contender in its steady state, as in a loop of calls of its own. Sleeping
        instead would hit the slow wake-up.
    prepare : dict[str, callable], optional
        Name -> zero-argument function called untimed before the contender's turn (settling
        included): e.g. setting the thread count, so that runs at several counts interleave.

    Returns
    -------
    dict[str, float]
        Name -> median seconds, in the order of ``contenders``.
    """
    wall, _ = _interleaved_samples(contenders, repeats, settle, prepare)
    return {name: statistics.median(times) for name, times in wall.items()}


def interleaved_wall_cpu_medians(contenders, repeats, prepare=None):
    """Like :func:`interleaved_medians` (no settling), returning ``{name: (wall, cpu)}``: median wall
    seconds and median process CPU seconds (all threads) per call. On a shared machine the CPU time
    counts only the cycles the process got, so ``work / cpu`` estimates the throughput per busy core
    even when other processes take turns on it (cache and memory contention still count).
    ``prepare`` (name -> zero-argument function, optional) is called untimed right before the contender's
    turn, as in :func:`interleaved_medians`."""
    wall, cpu = _interleaved_samples(contenders, repeats, 0.0, prepare)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in wall}


def _interleaved_samples(contenders, repeats, settle, prepare):
    """The round-robin loop of :func:`interleaved_medians`: ``(wall, cpu)``, each name -> seconds per timed call."""
    names = list(contenders)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for round_index in range(max(1, repeats)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = contenders[name]
            if prepare is not None and name in prepare:
                prepare[name]()
            if settle > 0:
                settle_start = time.perf_counter()
                fn()
                while time.perf_counter() - settle_start < settle:
                    fn()
            cpu_start = time.process_time()
            start = time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    return wall, cpu


def thread_counts():
    """``(1, n)`` with ``n`` the default thread count (Numba's pool size), or ``(1,)`` on one core: the
    counts at which benchmarks print their ratios."""
    import numba
    n = numba.config.NUMBA_NUM_THREADS
    return (1,) if n == 1 else (1, n)


def paired_ratio(fn, prepare_a, prepare_b, pairs, calls, seed=0):
    r"""Time of ``fn`` after ``prepare_b()`` over its time after ``prepare_a()``, measured in pairs.

    Each sample is ``calls`` calls of ``fn`` in a row (after an untimed one), so that it spans many scheduler slices
    (one call of a few ms is dominated by where the slices fall when another process shares a core); the two
    settings alternate within a pair and the pairs alternate their order (a drift of the machine hits both alike).
    The ratio ``r_i = t_b / t_a`` of each pair is one observation; the estimate is their median, with a percentile
    bootstrap 95 % interval of that median (2000 resamples, ``seed``).

    Parameters
    ----------
    fn : callable
    prepare_a, prepare_b : callable
        Called untimed before each sample of the setting (e.g. setting a thread count).
    pairs, calls : int

    Returns
    -------
    median, low, high : float
        Median of the pairs' ratios and its 95 % interval; ``high < 1``: b faster, ``low > 1``: b slower, else no
        difference this run can resolve.
    """
    def sample(prepare):
        prepare()
        fn()  # untimed: the first call after the switch pays for waking pools or re-tuning
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - start

    ratios = []
    for i in range(max(2, pairs)):
        if i % 2 == 0:
            a = sample(prepare_a)
            b = sample(prepare_b)
        else:
            b = sample(prepare_b)
            a = sample(prepare_a)
        ratios.append(b / a)
    ratios = np.asarray(ratios)
    boot = np.median(np.random.default_rng(seed).choice(ratios, (2000, len(ratios))), axis=1)
    return float(np.median(ratios)), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


@contextlib.contextmanager
def wrapped(module, name, wrap):
    """Within the block ``module.name`` is ``wrap(original)``; the original is restored on exit, also after an error
    (the benchmarks' measurement aids: the library looks its kernels up by module attribute at call time)."""
    original = getattr(module, name)
    setattr(module, name, wrap(original))
    try:
        yield
    finally:
        setattr(module, name, original)
