"""sbnnumba: stochastic binary networks in NumPy + Numba.

Public API: layers, networks, noise families, and the single estimator interface
``estimate(method, net, x, y, rng=None, **options) -> (loss, grads)``.
"""
from . import architectures, datasets, optim
from .conv import Conv2d
from .estimators import estimate, known_methods
from .layers import Linear
from .network import Network, Path, StageSample
from .noise import NOISES, get_noise
from .normalization import Normalized
from .summary import summary
from .weights import BernoulliWeights

__version__ = "0.1.0"

__all__ = ["Linear", "Conv2d", "Normalized", "BernoulliWeights", "Network", "Path", "StageSample", "estimate",
           "known_methods", "NOISES", "get_noise", "summary", "architectures", "datasets", "optim"]
