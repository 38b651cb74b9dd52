"""Gradient estimators of the expected loss, all behind :func:`estimate`.

Importing this package registers every estimator module.
"""
from . import exact, psa, st  # noqa: F401  (registration side effects)
from . import arm, reinforce, relaxations  # noqa: F401  (baselines: registration side effects)
from .registry import PATH_ESTIMATORS, DIRECT_ESTIMATORS, estimate, known_methods

__all__ = ["estimate", "known_methods", "PATH_ESTIMATORS", "DIRECT_ESTIMATORS"]
