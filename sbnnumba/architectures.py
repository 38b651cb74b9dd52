"""Network factories registered by name: ``build(name, input_shape, n_classes, **options)``.

* ``"mlp"``: dense stages of the given hidden widths.
* ``"conv"``: the PSA paper's all-convolutional SBN (see :func:`conv`).
"""
from __future__ import annotations

import numpy as np

from .layers import Linear
from .network import Network
from .validation import as_generator

ARCHITECTURES = {}


def register_architecture(name):
    def deco(fn):
        ARCHITECTURES[name] = fn
        return fn
    return deco


@register_architecture("mlp")
def mlp(input_shape, n_classes, hidden=(1024, 1024), noise="logistic", rng=None, dtype=np.float32,
        backend=None):
    """Dense SBN ``prod(input_shape) -> hidden[0] -> ... -> hidden[-1] -> n_classes``."""
    if len(hidden) == 0:
        raise ValueError("hidden: expected at least one hidden width")
    sizes = [int(np.prod(input_shape))] + [int(h) for h in hidden]
    return Network.dense(sizes, n_classes, noise=noise, rng=as_generator(rng), dtype=dtype, backend=backend)


def build(name, input_shape, n_classes, **options):
    """Build the architecture registered under ``name`` (ValueError lists the known names)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"arch: unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](input_shape, n_classes, **options)
