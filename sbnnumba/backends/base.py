r"""The backend interface: the operations whose implementation depends on the device.

A backend is an object with the methods of :class:`Backend`. Everything above this package
(layers, estimators, :mod:`sbnnumba.bitpack`, :class:`~sbnnumba.packed.PackedNetwork`, training)
calls these methods on ``net.backend`` (or on ``get_backend(name)``) and never asks which backend it
holds. Three are registered (:mod:`sbnnumba.backends`): ``reference`` (plain NumPy, the readable
definition every other backend is tested against), ``cpu`` (Numba kernels) and ``cuda`` (numba.cuda
kernels, or numba's simulator with ``NUMBA_ENABLE_CUDASIM=1``).

Arguments are validated by the callers that own the semantics (the layers for shapes,
:mod:`sbnnumba.bitpack` for packed words, thresholds and flips); a backend checks only what its own
kernels need (dtypes, contiguity). Arrays are batch first; ``noise`` is a
:class:`~sbnnumba.noise.NoiseFamily` (kernels use its integer ``code``). Results have the dtype of
``a`` (PSA) or the stated integer dtype (packed). A backend that runs on another device accepts host
(NumPy) arrays and returns host arrays for them; with device arrays in, it may return device arrays.

Operations (spec psa.md for the PSA formulas; :mod:`sbnnumba.bitpack` for the packed layout):

=============================  ======================================================================
``flip_propagate_dense``       ``d_in[b,i] = sum_j Delta[b,i,j] d_out[b,j]``,
                               ``Delta = F(-x_out (a - 2 W[j,i] x_in)) - F(-x_out a)``
``flip_propagate_conv``        the same sum over the receptive fields of a convolution
``sample_states``              ``x = +1 if u < F(a) else -1`` from given uniforms ``u``
``st_preactivation_grad``      ``g_a = 2 p(a) g`` (deep ST's backward factor ``2 p(a)`` applied)
``psa_preactivation_grad``     ``g_a = -x p(a) d``
``xnor_matmul``                ``out[i,j] = k - 2 popcount(A[i] XOR B[j])`` (int32)
``xnor_matmul_threshold``      packed ``sign(dot - t) * s`` (s = -1 where ``flip``)
``binary_conv2d``              zero-padded binary convolution of packed maps (int32)
``binary_conv2d_threshold``    packed ``sign(conv - t) * s``, channels last
=============================  ======================================================================

and the array operations of a training step (dense and conv affine maps and their gradients, batch
normalization, the latent-weight rule, the loss and PSA's head), declared in :mod:`sbnnumba.backends.step`
(:class:`~sbnnumba.backends.step.StepOperations`, a base class of :class:`Backend`).
"""
from __future__ import annotations

import abc

from .step import StepOperations


class Backend(StepOperations):
    """Where the device-dependent operations of a network run (see the module docstring).

    Subclasses set :attr:`name` and implement every abstract method; registration
    (:func:`sbnnumba.backends.register_backend`) makes them available by name. :meth:`unavailable_reason`
    says why a backend cannot run in this process (``None`` when it can).
    """

    name: str = ""
    #: True when the backend's arrays live on another device (the training loop can then keep a whole
    #: step there instead of calling the backend once per operation with host arrays).
    device_resident: bool = False

    @classmethod
    def unavailable_reason(cls):
        """Why this backend cannot run here, or ``None`` when it can (default: always available)."""
        return None

    def __repr__(self):
        return f"{type(self).__name__}()"

    def device_count(self):
        """Devices of this backend visible to the process (host backends: 0, they run on the CPU cores)."""
        return 0

    def select_device(self, index):
        """Run this process's later work of this backend on device ``index`` (host backends: nothing to do).
        Call before the first operation (a rank of a data-parallel run picks its GPU this way)."""

    # -- PSA flip propagation -------------------------------------------------------------------
    @abc.abstractmethod
    def flip_propagate_dense(self, x_in, a, x_out, weight, d_out, noise, form="auto"):
        r"""PSA flip propagation through a dense layer.

        .. math:: d^{in}_{bi} = \sum_j \big(F(-x_{bj}(a_{bj} - 2 W_{ji} x^{in}_{bi})) - F(-x_{bj} a_{bj})\big)\, d_{bj}

        Parameters
        ----------
        x_in : ndarray (B, N_in)
            +-1 input states.
        a, x_out, d_out : ndarray (B, N_out)
            Pre-activations, sampled +-1 output states, flip effects of the output units.
        weight : ndarray (N_out, N_in)
        noise : NoiseFamily
        form : {"auto", "ratio", "bounded", "probit", "generic"}
            Which algorithm evaluates the sum (:func:`sbnnumba.kernels.cpu.choose_form`); every form
            computes the same quantity, a backend without a form uses an exact one it has.

        Returns
        -------
        ndarray (B, N_in), the dtype of ``a``.
        """

    @abc.abstractmethod
    def flip_propagate_conv(self, x_in, a, x_out, weight, d_out, stride, padding, noise, form="auto"):
        r"""PSA flip propagation through a convolution (spec psa.md, section 2.10).

        ``d_in[b,r,i] = sum_c sum_{j : i in RF(j)} Delta[(r,i)->(c,j)] d_out[b,c,j]`` with
        ``Delta = F(-x[c,j](a[c,j] - 2 W[c,r,off] x[r,i])) - F(-x[c,j] a[c,j])``.

        Parameters
        ----------
        x_in : ndarray (B, C_in, H, W)
        a, x_out, d_out : ndarray (B, C_out, H_out, W_out)
        weight : ndarray (C_out, C_in, kh, kw)
        stride, padding : (int, int)
        noise : NoiseFamily
        form : as in :meth:`flip_propagate_dense`.

        Returns
        -------
        ndarray (B, C_in, H, W), the dtype of ``a``.
        """

    # -- element-wise ---------------------------------------------------------------------------
    @abc.abstractmethod
    def sample_states(self, a, u, noise):
        """Binary states ``x = +1 if u < F(a) else -1`` from uniforms ``u`` (shape and dtype of ``a``)."""

    @abc.abstractmethod
    def st_preactivation_grad(self, a, g, noise):
        """Deep-ST pre-activation gradient ``g_a = 2 p(a) g``: ``2 p(a)``, the derivative of the mean response
        ``2 F(a) - 1``, replaces ``dx/da``; all of one shape."""

    @abc.abstractmethod
    def psa_preactivation_grad(self, x, a, d, noise):
        """PSA pre-activation gradient ``g_a = -x p(a) d`` (spec psa.md, Eq. 2); all of one shape."""

    # -- bit-packed -----------------------------------------------------------------------------
    @abc.abstractmethod
    def xnor_matmul(self, a_words, weights, k):
        r"""``out[i, j] = k - 2 \sum_w popcount(a[i, w] XOR b[j, w])``.

        Parameters
        ----------
        a_words : ndarray (M, ceil(k/64)) uint64
        weights : sbnnumba.bitpack.PreparedWeights
            ``weights.words`` (N, ceil(k/64)) uint64; ``weights.panels`` the CPU kernels' layout.
        k : int
            True reduction length.

        Returns
        -------
        ndarray (M, N) int32
        """

    @abc.abstractmethod
    def xnor_matmul_threshold(self, a_words, weights, k, thresholds, flip):
        """Packed ``y[i, j] = (dot[i, j] < t[j]) XOR flip[j]`` (bit set = -1): uint64 (M, ceil(N/64)).

        ``thresholds``: int64 (N,), already rounded up and clipped to ``[-(k+2), k+2]``;
        ``flip``: bool (N,).
        """

    @abc.abstractmethod
    def binary_conv2d(self, x_words, weights, c_in, stride, padding):
        """Binary convolution with exact zero padding: int32 (B, C_out, H_out, W_out).

        ``x_words`` (B, H, W, ceil(c_in/64)), ``weights.words`` (C_out, kh, kw, ceil(c_in/64)) uint64;
        ``stride``, ``padding`` pairs of ints.
        """

    @abc.abstractmethod
    def binary_conv2d_threshold(self, x_words, weights, c_in, thresholds, flip, stride, padding):
        """Packed ``(conv < t[c]) XOR flip[c]``, channels last: uint64 (B, H_out, W_out, ceil(C_out/64)).

        ``thresholds`` int64 (C_out,) and ``flip`` bool (C_out,) as in :meth:`xnor_matmul_threshold`.
        """


def abstract_methods():
    """The names of the methods every backend must provide (sorted).

    Returns
    -------
    list of str
        The operations above and those of :class:`~sbnnumba.backends.step.StepOperations`.
    """
    return sorted(Backend.__abstractmethods__)
