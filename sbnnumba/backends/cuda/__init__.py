r"""The ``cuda`` backend: numba.cuda kernels on an NVIDIA GPU (or in numba's CUDA simulator).

Layout of this package:

* :mod:`.kernels`: the PSA flip-propagation, XNOR-popcount and element-wise kernels (``@cuda.jit``);
* :mod:`.train_kernels`: the further kernels of the device-resident training step (GEMM, im2col,
  head, batch normalization, optimizer updates);
* :mod:`.device`: availability (:func:`~.device.unavailable_reason`), host/device array conventions,
  the device weight cache;
* :mod:`.ops`: launch configurations, one function per backend operation;
* :mod:`.layer_ops` (with the small kernels of :mod:`.layer_kernels`): the training-step operations
  (:mod:`sbnnumba.backends.step`) on device arrays, :class:`~.layer_ops.DeviceStepOperations`;
* this module: :class:`CudaBackend`, which maps the :class:`~sbnnumba.backends.base.Backend`
  interface onto :mod:`.ops` (noise families to their kernel codes) and inherits the step operations.

Nothing here imports ``numba.cuda`` at import time; ``get_backend("cuda")`` raises a ``RuntimeError``
naming the reason when CUDA cannot run in this process.
"""
from __future__ import annotations

from ..base import Backend
from ..registry import register_backend
from . import device, ops
from .layer_ops import DeviceStepOperations


class CudaBackend(DeviceStepOperations, Backend):
    """numba.cuda implementation of :class:`~sbnnumba.backends.base.Backend` (registered as ``"cuda"``).

    Device arrays in give device arrays out. Host arrays: the PSA, sampling, element-wise and packed
    operations upload them and return host results (weights are cached on the device,
    :data:`.device.weight_cache`): the per-call routing of a host network on this backend; the
    training-step operations (:class:`~.layer_ops.DeviceStepOperations`) run host arrays on the host
    backend, so such a network's layers and head stay NumPy code. The device-resident step
    (:class:`sbnnumba.training.resident.CudaTrainer`) trains a device copy of the network, whose every
    operation runs here.
    """

    name = "cuda"
    device_resident = True

    @classmethod
    def unavailable_reason(cls):
        reason = device.unavailable_reason()
        return None if reason is None else f"{reason.rstrip('. ')}. To fix: {device.INSTALL_HINT}."

    def device_count(self):
        return len(device._cuda().gpus)

    def select_device(self, index):
        device._cuda().select_device(index)

    def flip_propagate_dense(self, x_in, a, x_out, weight, d_out, noise, form="auto"):
        return ops.flip_propagate_dense(x_in, a, x_out, weight, d_out, noise.code, form)

    def flip_propagate_conv(self, x_in, a, x_out, weight, d_out, stride, padding, noise, form="auto"):
        return ops.flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, noise.code, form)

    def sample_states(self, a, u, noise):
        return ops.sample_states(a, u, noise.code)

    def st_preactivation_grad(self, a, g, noise):
        return ops.st_preactivation_grad(a, g, noise.code)

    def psa_preactivation_grad(self, x, a, d, noise):
        return ops.psa_preactivation_grad(x, a, d, noise.code)

    def xnor_matmul(self, a_words, weights, k):
        return ops.xnor_matmul(a_words, weights, k)

    def xnor_matmul_threshold(self, a_words, weights, k, thresholds, flip):
        return ops.xnor_matmul_threshold(a_words, weights, k, thresholds, flip)

    def binary_conv2d(self, x_words, weights, c_in, stride, padding):
        return ops.binary_conv2d(x_words, weights, c_in, stride, padding)

    def binary_conv2d_threshold(self, x_words, weights, c_in, thresholds, flip, stride, padding):
        return ops.binary_conv2d_threshold(x_words, weights, c_in, thresholds, flip, stride, padding)


register_backend(CudaBackend)
