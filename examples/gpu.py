"""Train on an NVIDIA GPU with ``backend="cuda"``; runs in numba's CUDA simulator without a GPU.

Run:  python examples/gpu.py [--tiny]
      NUMBA_ENABLE_CUDASIM=1 python examples/gpu.py --tiny     (no GPU: the simulator, exact but slow)

A dense SBN built with ``backend="cuda"`` is trained by ``training.fit``, which keeps the data,
activations, parameters and optimizer state on the device for PSA and ST (the device-resident step);
its gradients equal those of the CPU backend up to float rounding. Without a usable GPU (and without
the simulator) ``get_backend("cuda")`` raises ``RuntimeError`` naming the reason; the script prints it.
``--tiny`` uses the 2-D toy data and a 2-8-8 network (the simulator runs every GPU thread as a Python
thread); otherwise a 784-1024-1024 MLP trains on Fashion-MNIST. Installing the CUDA pieces:
docs/guide/gpu.md.
"""
import argparse
import sys

import numpy as np

import sbnnumba as sb
from sbnnumba import architectures, datasets, training
from sbnnumba.backends import get_backend


def build(backend, tiny):
    if tiny:
        return sb.Network.dense([2, 8, 8], 2, rng=np.random.default_rng(1), backend=backend)
    return architectures.build("mlp", (1, 28, 28), 10, rng=1, hidden=(1024, 1024), backend=backend)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy data and a tiny network (for tests)")
    args = parser.parse_args(argv)
    try:
        get_backend("cuda")
    except RuntimeError as err:
        print(f"no usable CUDA backend: {err}")
        return 1
    if args.tiny:
        x, y = datasets.toy2d(64, rng=np.random.default_rng(0))
        x = x.astype(np.float32)
    else:
        data = datasets.load_fashion_mnist(verbose=False)
        x, y = datasets.normalize(data.x_train), data.y_train

    gpu_net, cpu_net = build("cuda", args.tiny), build("cpu", args.tiny)
    for net in (gpu_net, cpu_net):
        net.initialize_from_data(x[:32])
    # the same sampled path on both backends (same generator seed): the gradients agree to float rounding
    _, g_gpu = sb.estimate("psa", gpu_net, x[:32], y[:32], rng=np.random.default_rng(0))
    _, g_cpu = sb.estimate("psa", cpu_net, x[:32], y[:32], rng=np.random.default_rng(0))
    worst = max(float(np.max(np.abs(g_gpu[k] - g_cpu[k])) / (np.max(np.abs(g_cpu[k])) + 1e-30)) for k in g_cpu)
    print(f"PSA gradient on cuda vs cpu: largest relative difference {worst:.2e}")

    result = training.fit(gpu_net, (x, y), estimator="psa", epochs=1 if args.tiny else 3, lr=1e-2,
                          batch_size=32 if args.tiny else 64, eval_samples=2, data_init=False, progress=not args.tiny)
    print(f"trained {result.epochs_done} epoch(s) on cuda; validation ensemble accuracy "
          f"{result.history[-1]['val_eacc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
