"""Gradient estimators of the expected loss, all behind :func:`estimate`.

Importing this package registers every estimator module.
"""
from . import arm, exact, psa, reinforce, relaxations, st  # noqa: F401  (registration side effects)  # noqa: F401  (baselines: registration side effects)
from .registry import DIRECT_ESTIMATORS, PATH_ESTIMATORS, estimate, known_methods

__all__ = ["estimate", "known_methods", "PATH_ESTIMATORS", "DIRECT_ESTIMATORS"]
