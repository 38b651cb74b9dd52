"""Benchmark: sampling logistic and normal binary units, ``x = +1 if u < F(a) else -1``, from given uniforms.

Prints, measured in the same run (medians over interleaved repeats, float32, at one thread and at the default
thread count), for a dense layer's units (128 x 1024, the main job's batch) and for the first stage of the paper's
conv network at width 1.0 (64 x 96 x 28 x 28, 4.8 million units):

- ``Logistic.sample(a, u)``, the Numba kernel (``sbnnumba/kernels/sampling.py``: a vectorized float32 decision,
  the exact formula for the few tasks too close to call);
- the NumPy / SciPy formula ``where(u < expit(a), 1, -1)`` it reproduces bit for bit (checked here);
- ``random_uniforms`` of the same size (the draw every sample needs: PCG64's blocks filled by
  ``sbnnumba/kernels/pcg64.py``), for scale, against NumPy's ``rng.random`` (the same values, one thread);

and the share of tasks that the kernel redid with the exact formula; then the same for normal units
(``Normal.sample``: the vectorized decision by ``probit.normal_cdf``, SciPy's ``ndtr`` for the tasks too close to
call) against ``where(u < ndtr(a), 1, -1)``, and for uniform and triangular units (one pass with the formula's
operations) against ``where(u < cdf(a), 1, -1)``.

Usage: python bench/sampling.py [--repeats 21]
"""
import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numpy as np  # noqa: E402
from scipy import special  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved_medians, machine_info, thread_counts  # noqa: E402

import sbnnumba as sb  # noqa: E402
from sbnnumba.kernels import sampling  # noqa: E402
from sbnnumba.noise import get_noise  # noqa: E402
from sbnnumba.uniforms import random_uniforms  # noqa: E402

SHAPES = {"dense 128 x 1024": (128, 1024), "conv stage 1, 64 x 96 x 28 x 28": (64, 96, 28, 28)}


def redone_share(a, u, family="logistic"):
    """The share of the kernel's tasks that its fast decision leaves to the exact formula."""
    flat_a, flat_u = a.reshape(-1), u.reshape(-1)
    if family == "normal":
        unsure = np.empty(-(-flat_a.size // sampling.CHUNK), np.bool_)
        sampling._decide_normal_f32(flat_a, flat_a.view(np.uint32), flat_u, np.empty_like(flat_a), unsure)
        return unsure.mean()
    out = np.empty(sampling.CHUNK, np.float32)
    starts = range(0, flat_a.size, sampling.CHUNK)
    redone = sum(bool(sampling._decide_f32(flat_a[i:i + sampling.CHUNK], flat_u[i:i + sampling.CHUNK],
                                           out[:min(sampling.CHUNK, flat_a.size - i)])) for i in starts)
    return redone / len(starts)


def family_section(rng, shape, repeats, family):
    """Units of ``shape`` of another family: its sampler (``Noise.sample``) against the NumPy / SciPy formula
    ``where(u < cdf(a), 1, -1)``, at each thread count."""
    noise = get_noise(family)
    a = rng.normal(0.0, 2.0 if family == "normal" else 1.0, size=shape).astype(np.float32)
    u = rng.random(shape, dtype=np.float32)
    if not np.array_equal(noise.sample(a, u), np.where(u < noise.cdf(a), np.float32(1), np.float32(-1))):
        raise AssertionError(f"the {family} kernel's samples differ from the formula's")
    contenders = {"kernel": lambda: noise.sample(a, u),
                  "formula": lambda: np.where(u < noise.cdf(a), np.float32(1), np.float32(-1))}
    redone = f" (tasks redone with ndtr: {100 * redone_share(a, u, 'normal'):.2f} %)" if family == "normal" else ""
    print(f"   {family} units{redone}")
    for threads in thread_counts():
        sb.set_num_threads(threads)
        med = interleaved_medians(contenders, repeats, settle=0.02)
        print(f"   {threads} thread(s): kernel {1e9 * med['kernel'] / a.size:.2f} ns/unit, formula "
              f"{1e9 * med['formula'] / a.size:.2f} (kernel {med['formula'] / med['kernel']:.1f}x faster)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)
    machine_info()
    logistic = get_noise("logistic")
    rng = np.random.default_rng(0)
    for label, shape in SHAPES.items():
        # pre-activations of the spread batch norm or the weights give them: logistic with scale 2
        a = rng.logistic(0.0, 2.0, size=shape).astype(np.float32)
        u = rng.random(shape, dtype=np.float32)
        got = logistic.sample(a, u)  # also the warm-up (compilation)
        if not np.array_equal(got, np.where(u < special.expit(a), np.float32(1), np.float32(-1))):
            raise AssertionError("the kernel's samples differ from the formula's")
        draw = np.random.default_rng(1)
        contenders = {"kernel": lambda: logistic.sample(a, u),
                      "formula": lambda: np.where(u < special.expit(a), np.float32(1), np.float32(-1)),
                      "uniforms": lambda: random_uniforms(draw, shape, np.float32),
                      "numpy draw": lambda: draw.random(shape, dtype=np.float32)}
        print(f"\n{label} ({a.size:,} units; tasks redone exactly: {100 * redone_share(a, u):.2f} %)")
        for threads in thread_counts():
            sb.set_num_threads(threads)
            med = interleaved_medians(contenders, args.repeats, settle=0.02)
            ns = {name: 1e9 * t / a.size for name, t in med.items()}
            print(f"   {threads} thread(s): kernel {ns['kernel']:.2f} ns/unit, formula {ns['formula']:.2f} "
                  f"(kernel {med['formula'] / med['kernel']:.1f}x faster), uniforms {ns['uniforms']:.2f} "
                  f"(kernel / uniforms {med['kernel'] / med['uniforms']:.2f}; NumPy's rng.random "
                  f"{ns['numpy draw']:.2f}, {med['numpy draw'] / med['uniforms']:.1f}x the uniforms)")
        for family in ("normal", "uniform", "triangular"):
            family_section(rng, shape, args.repeats, family)
    sb.set_num_threads(thread_counts()[-1])


if __name__ == "__main__":
    main()
