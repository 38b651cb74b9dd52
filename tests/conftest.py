import numpy as np
import pytest

import sbnnumba as sb

NOISE_NAMES = ["logistic", "normal", "uniform", "triangular"]


def random_net(sizes, n_classes=3, noise="logistic", seed=0, scale=1.0, dtype=np.float64):
    """Dense float64 net with N(0, scale^2) weights and biases (the spec's test recipe)."""
    rng = np.random.default_rng(seed)
    net = sb.Network.dense(sizes, n_classes, noise=noise, rng=rng, dtype=dtype)
    for p in net.params.values():
        p[...] = scale * rng.normal(size=p.shape)
    return net


def group_rel_error(g_true, g_est, net):
    """Relative error ||g_est - g|| / ||g|| per parameter group (each stage's (W, b), and the head)."""
    out = {}
    for prefix, _ in net.layers():
        keys = [k for k in g_true if k.startswith(prefix + ".")]
        a = np.concatenate([g_true[k].ravel() for k in keys])
        b = np.concatenate([g_est[k].ravel() for k in keys])
        out[prefix] = np.linalg.norm(a - b) / np.linalg.norm(a)
    return out


@pytest.fixture(params=NOISE_NAMES)
def noise_name(request):
    return request.param
