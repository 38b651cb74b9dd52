"""sbnnumba: stochastic binary networks in NumPy + Numba.

Public API: layers, networks, noise families, and the single estimator interface
``estimate(method, net, x, y, rng=None, **options) -> (loss, grads)``.
"""
from .estimators import estimate, known_methods
from .layers import Linear
from .network import Network, Path, StageSample
from .noise import NOISES, get_noise

__version__ = "0.1.0"

__all__ = ["Linear", "Network", "Path", "StageSample", "estimate", "known_methods", "NOISES", "get_noise"]
