"""Benchmark: the unit entropy that evaluation measures for every sampled binary unit.

Prints, measured in the same run (medians over interleaved repeats):

1. ``sbnnumba.training.unit_entropy`` on 9.4 million float32 pre-activations (about one sample of 500
   images through the half-width conv SBN) drawn from N(0, std^2) with the family's noise std (the
   scale batch norm gives them with ``bn_gamma="noise-std"``), per noise family: the Numba kernel
   (``kernels/entropy.py``) vs the NumPy log-cdf formula (what a family unknown to the kernels gets,
   and what every family but logistic got before the kernel), against a copy of the array as the
   memory-bound baseline.
2. ``sbnnumba.training.evaluate`` of that conv SBN (batch norm, triangular noise) on 500 images with 2
   samples: with the entropy vs without it (``entropy=False``).

Usage: python bench/unit_entropy.py [--repeats 5]
"""
import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved_medians, machine_info  # noqa: E402

from sbnnumba import architectures, training  # noqa: E402
from sbnnumba import noise as noises


def log_cdf_twin(family):
    """The same family under a name the kernels do not know: unit_entropy takes its log-cdf path."""
    cls = type(family)
    return type(cls.__name__ + "ViaLogCdf", (cls,), {"name": family.name + "-via-log-cdf"})()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=9_400_000, help="pre-activations in part 1")
    args = parser.parse_args(argv)
    machine_info()
    rng = np.random.default_rng(0)
    z = rng.normal(size=args.size)

    print(f"\n1) unit_entropy on {args.size:,} float32 pre-activations, a ~ N(0, std^2) with the noise's std")
    for name, family in noises.NOISES.items():
        twin = log_cdf_twin(family)
        a = (family.std * z).astype(np.float32)
        np.testing.assert_allclose(training.unit_entropy(a[:100_000], family), training.unit_entropy(a[:100_000], twin),
                                   atol=1e-5)  # also the warm-up (compilation)
        med = interleaved_medians({"copy": lambda: a.copy(), "kernel": lambda: training.unit_entropy(a, family),
                                   "log-cdf": lambda: training.unit_entropy(a, twin)}, args.repeats, settle=0.05)
        print(f"   {name:11s} kernel {med['kernel'] * 1e3:8.1f} ms ({med['kernel'] / med['copy']:5.1f}x copy)   "
              f"log-cdf {med['log-cdf'] * 1e3:8.1f} ms ({med['log-cdf'] / med['copy']:5.1f}x copy)   "
              f"=> kernel {med['log-cdf'] / med['kernel']:.1f}x faster")

    net = architectures.build("conv", (1, 28, 28), 10, rng=0, width=0.5, input_padding=2, normalize=True,
                              noise="triangular")
    x = rng.random((500, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 500)
    training.evaluate(net, x[:20], y[:20], samples=2, rng=0)  # warm-up
    med = interleaved_medians({"with": lambda: training.evaluate(net, x, y, samples=2, rng=0),
                               "without": lambda: training.evaluate(net, x, y, samples=2, rng=0, entropy=False)},
                              max(1, (args.repeats + 1) // 2))
    print("\n2) evaluate, half-width conv SBN (batch norm, triangular noise), 500 images, 2 samples")
    print(f"   with entropy {med['with']:.2f} s, without {med['without']:.2f} s "
          f"=> entropy adds {100 * (med['with'] / med['without'] - 1):.0f} %")


if __name__ == "__main__":
    main()
