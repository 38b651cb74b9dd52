"""sbnnumba: stochastic binary networks in NumPy + Numba.

Public API: layers, networks, noise families, and the single estimator interface
``estimate(method, net, x, y, rng=None, **options) -> (loss, grads)``.
"""
import os as _os

# Numba's OpenMP threading layer keeps its worker threads spinning after every parallel kernel; on a
# machine with few cores they then compete with the BLAS threads of the NumPy matmuls that follow (a
# training step alternates both): measured on 2 cores, an ST step of a 784-1024-1024-10 net took 170 ms
# instead of 30 ms. Passive waiting only adds the threads' wake-up latency to each kernel launch.
# The user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenBLAS's own workers spin for 2^28 cycles (~0.1 s) after every BLAS call; on 2 cores the Numba
# kernel that follows (the PSA flip propagation, the packed first stage) then runs at half speed:
# measured, a 1024x1024 flip propagation 10.5 -> 6.2 ms and a PSA training step 30 -> 25 ms with
# 2^4 cycles, while BLAS-only work is unchanged. Only effective when sbnnumba is imported before
# NumPy loads OpenBLAS (``python -m sbnnumba``, the benchmarks); otherwise set it in the environment.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import architectures, datasets, optim  # noqa: E402
from .conv import Conv2d  # noqa: E402
from .estimators import estimate, known_methods  # noqa: E402
from .layers import AffineLayer, Layer, Linear  # noqa: E402
from .network import Network, Path, StageSample  # noqa: E402
from .noise import NOISES, NoiseFamily, get_noise, register_noise  # noqa: E402
from .normalization import Normalized  # noqa: E402
from .packed import PackedNetwork  # noqa: E402
from .runtime import get_num_threads, set_num_threads  # noqa: E402
from .summary import summary  # noqa: E402
from .weights import BernoulliWeights, RealWeights  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Layer", "AffineLayer", "Linear", "Conv2d", "Normalized", "BernoulliWeights", "RealWeights", "PackedNetwork",
           "Network", "Path", "StageSample", "estimate", "known_methods", "set_num_threads", "get_num_threads",
           "NOISES", "NoiseFamily", "get_noise", "register_noise", "summary", "architectures", "datasets", "optim"]
