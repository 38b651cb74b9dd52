r"""The array operations of one training step: the part of the :class:`~sbnnumba.backends.base.Backend`
interface that the layers, the batch normalization, the weight parameterizations and the path
estimators (PSA, ST) are written in.

Every rule of a training step is written once, in terms of these operations: the layers
(:mod:`sbnnumba.layers`, :mod:`sbnnumba.conv`, :mod:`sbnnumba.normalization`, :mod:`sbnnumba.weights`)
call them on their :attr:`~sbnnumba.layers.Layer.backend`, the estimators on ``net.backend``. The
``reference`` backend evaluates each with the NumPy expression the library always used (so seeded host
runs are bit-identical), ``cpu`` inherits them, ``cuda`` runs them as kernels on device arrays, which
is how the device-resident step (:class:`sbnnumba.training.resident.CudaTrainer`) runs the same
estimator code on a copy of the network whose arrays live on the GPU.

Shapes are batch first: ``B`` examples, dense tensors (B, N), maps (B, C, H, W); "per channel" means
per unit of a dense tensor and per channel of a map (reductions over the batch and the positions).
``noise`` is a :class:`~sbnnumba.noise.NoiseFamily`.

=============================  ======================================================================
dense layer                    ``dense_forward`` ``x W^T + b``, ``dense_backward_input`` ``g W``,
                               ``dense_param_grads`` ``(g^T x, sum_b g)``
convolution                    ``conv_patches`` (im2col, once per stage and step), ``conv_forward``,
                               ``conv_param_grads`` (GEMMs on the patches), ``conv_backward_input``
                               (transposed convolution: GEMM + col2im)
batch normalization            ``channel_moments``, ``running_average``, ``normalize``,
                               ``channel_sums``, ``normalize_backward``; ``channel_sums64`` (float64,
                               for statistics summed over processes)
Bernoulli weights              ``latent_grad`` (``dL/dw -> dL/deta``), ``clip_`` (projection)
head and loss                  ``softmax_xent``, ``head_flips``, ``rb_flip_weights``, ``rb_mix``,
                               ``rb_value``, ``rb_head_grads``; ``psa_rb_head`` (``head_flips`` and
                               ``rb_head_grads`` in one operation, composed of them unless a backend
                               overrides it)
element-wise, bookkeeping      ``multiply``, ``scale_rows``, ``weighted_sum``, ``asarray``, ``loss_scalar``
host transfers                 ``to_host``, ``to_device_of`` (no-ops on host arrays)
=============================  ======================================================================
"""
from __future__ import annotations

import abc


class StepOperations(abc.ABC):
    """The array operations of a training step (see the module docstring); part of every backend."""

    # -- dense layer ----------------------------------------------------------------------------
    @abc.abstractmethod
    def dense_forward(self, x, weight, bias):
        r"""Affine map of a dense layer, :math:`a = x W^\top + b`.

        Parameters
        ----------
        x : array (B, N_in)
        weight : array (N_out, N_in)
        bias : array (N_out,)

        Returns
        -------
        array (B, N_out)
        """

    @abc.abstractmethod
    def dense_backward_input(self, g_a, weight):
        """Transposed map ``g_x = g_a W``.

        Parameters
        ----------
        g_a : array (B, N_out)
        weight : array (N_out, N_in)

        Returns
        -------
        array (B, N_in)
        """

    @abc.abstractmethod
    def dense_param_grads(self, x, g_a):
        """Parameter gradients of a dense layer summed over the batch: ``(g_a^T x, sum_b g_a)``.

        Parameters
        ----------
        x : array (B, N_in)
        g_a : array (B, N_out)

        Returns
        -------
        g_w : array (N_out, N_in)
        g_b : array (N_out,)
        """

    # -- convolution ----------------------------------------------------------------------------
    @abc.abstractmethod
    def conv_patches(self, x, kernel_size, stride, padding):
        """The patch matrix (im2col) of maps ``x``, in this backend's layout: the argument of its
        :meth:`conv_forward` and :meth:`conv_param_grads`. A stage builds it once per step: the forward
        pass and the weight gradient share it (the sampled path keeps it, :class:`sbnnumba.network.StageSample`).

        Entries ``x_pad[b, r, s_h o_y + d_y, s_w o_x + d_x]`` (0 in the zero padding) at rows/columns
        ``(r, d_y, d_x)`` and ``(b, o_y, o_x)``: the host backends store (C_in kh kw, B H_out W_out)
        (channel-major, so both GEMMs read it without a transposed copy), ``cuda`` (B H_out W_out, C_in kh kw).

        Parameters
        ----------
        x : array (B, C_in, H, W)
        kernel_size, stride, padding : (int, int)

        Returns
        -------
        array, 2-D (the layout above)
        """

    @abc.abstractmethod
    def conv_forward(self, cols, weight, bias, out_shape):
        """Zero-padded cross-correlation ``a[b,c,o] = sum_{r,off} W[c,r,off] x_pad[b,r,s o + off] + bias[c]``,
        from the patch matrix ``cols`` of ``x`` (:meth:`conv_patches`).

        Parameters
        ----------
        cols : array
            :meth:`conv_patches` of ``x`` (B, C_in, H, W) on this backend.
        weight : array (C_out, C_in, kh, kw)
        bias : array (C_out,) or None
            None: no bias (the moment propagation of :meth:`sbnnumba.conv.Conv2d.forward_moments`).
        out_shape : (int, int, int, int)
            (B, C_out, H_out, W_out), the shape of the result.

        Returns
        -------
        array (B, C_out, H_out, W_out), C-contiguous.
        """

    @abc.abstractmethod
    def conv_backward_input(self, g_a, weight, in_shape, stride, padding):
        """Transposed convolution ``g_x[b,r,i] = sum_{c, j: i in RF(j)} W[c,r,off] g_a[b,c,j]`` (padding dropped).

        Parameters
        ----------
        g_a : array (B, C_out, H_out, W_out)
        weight : array (C_out, C_in, kh, kw)
        in_shape : (int, int, int)
            Per-example input shape (C_in, H, W).
        stride, padding : (int, int)

        Returns
        -------
        array (B, C_in, H, W)
        """

    @abc.abstractmethod
    def conv_param_grads(self, cols, g_a, weight_shape):
        """Gradients of a convolution's shared weights and bias, summed over positions and the batch.

        ``g_w[c,r,dy,dx] = sum_{b,j} g_a[b,c,j] x_pad[b,r,s j + (dy,dx)]``, ``g_b[c] = sum_{b,j} g_a[b,c,j]``.

        Parameters
        ----------
        cols : array
            :meth:`conv_patches` of the stage's input ``x`` (B, C_in, H, W) on this backend.
        g_a : array (B, C_out, H_out, W_out)
        weight_shape : (int, int, int, int)
            (C_out, C_in, kh, kw).

        Returns
        -------
        g_w : array (C_out, C_in, kh, kw)
        g_b : array (C_out,)
        """

    # -- batch normalization --------------------------------------------------------------------
    @abc.abstractmethod
    def channel_moments(self, z):
        """Batch mean and (biased) variance per channel.

        Parameters
        ----------
        z : array (B, C) or (B, C, H, W)

        Returns
        -------
        mean, var : arrays (C,)
        """

    @abc.abstractmethod
    def running_average(self, running, batch, momentum):
        """Running statistic ``(1 - m) r + m batch`` (a new array).

        Parameters
        ----------
        running, batch : arrays (C,)
        momentum : float

        Returns
        -------
        array (C,)
        """

    @abc.abstractmethod
    def normalize(self, z, mean, var, gamma, beta, eps):
        r"""Batch normalization with given statistics, per channel ``c``:

        .. math:: \sigma^{-1}_c = 1 / \sqrt{var_c + \epsilon},\quad \hat z = (z - mean_c) \sigma^{-1}_c,
                  \quad a = \gamma_c \hat z + \beta_c

        Parameters
        ----------
        z : array (B, C) or (B, C, H, W)
        mean, var, gamma, beta : arrays (C,)
        eps : float

        Returns
        -------
        a, z_hat : arrays, the shape of ``z``
        inv_std : array (C,)
        """

    @abc.abstractmethod
    def channel_sums(self, t, u):
        """Per-channel sums ``(sum t, sum t u)`` over the batch and the positions.

        Parameters
        ----------
        t, u : arrays of one shape (B, C) or (B, C, H, W)

        Returns
        -------
        s1, s2 : arrays (C,)
        """

    @abc.abstractmethod
    def channel_sums64(self, t, u):
        r"""Per-channel sums in float64, over the batch and the positions:

        .. math:: S_1 = \sum_{b,p} t_{bcp}, \qquad S_2 = \sum_{b,p} t_{bcp} u_{bcp}

        (each entry converted to float64 before the product and the sums). Data-parallel batch
        normalization sums these over the processes (:attr:`sbnnumba.normalization.Normalized.reducer`),
        so they keep float64 whatever the working dtype.

        Parameters
        ----------
        t, u : arrays of one shape (B, C) or (B, C, H, W)

        Returns
        -------
        s1, s2 : float64 arrays (C,), where ``t`` lives (host or device)
        """

    @abc.abstractmethod
    def normalize_backward(self, g_a, z_hat, scale, sums, n):
        r"""Gradient of the normalization's input from ``g_a = dL/da``, per channel ``c``:

        .. math:: g_z = s_c \big(g_a - S_1 / n - \hat z\, S_2 / n\big)

        with ``s = gamma inv_std`` and ``(S_1, S_2)`` = :meth:`channel_sums` ``(g_a, z_hat)`` (batch
        statistics: the backward pass goes through them), or ``g_z = s g_a`` when ``sums`` is None
        (fixed statistics, evaluation mode).

        Parameters
        ----------
        g_a, z_hat : arrays (B, C) or (B, C, H, W)
        scale : array (C,)
        sums : (array (C,), array (C,)) or None
        n : int or float
            Entries per channel behind ``sums`` (``B H W``, or the data-parallel total).

        Returns
        -------
        array, the shape of ``g_a``
        """

    # -- Bernoulli weights ----------------------------------------------------------------------
    @abc.abstractmethod
    def latent_grad(self, eta, g_w, noise, rule):
        """Gradient of latent weights from ``g_w = dL/dw``: ``2 g_w`` (``rule="md"``, mirror descent) or
        ``2 p(eta) g_w`` (``rule="latent"``); :mod:`sbnnumba.weights`.

        Parameters
        ----------
        eta, g_w : arrays of one shape
        noise : NoiseFamily
            The weight noise.
        rule : {"md", "latent"}

        Returns
        -------
        array, the shape of ``eta``
        """

    @abc.abstractmethod
    def clip_(self, x, bound):
        """In place ``x <- clip(x, -bound, bound)`` (the projection of latent weights).

        Parameters
        ----------
        x : array
        bound : float

        Returns
        -------
        None
        """

    # -- head and loss --------------------------------------------------------------------------
    @abc.abstractmethod
    def softmax_xent(self, logits, y):
        """Per-example softmax cross-entropy and its logit gradient (:func:`sbnnumba.losses.xent`).

        Parameters
        ----------
        logits : array (B, K)
        y : int array (B,)

        Returns
        -------
        loss : array (B,)
        g : array (B, K)
            ``softmax(eta) - onehot(y)``.
        """

    @abc.abstractmethod
    def head_flips(self, logits, y, x_last, v, loss0):
        """PSA's exact head differences and the single-flip logit gradients (spec psa.md, section 2.6).

        ``eta^(i) = eta - 2 x_i V[:, i]``; ``d[b, i] = l(eta^(i)) - l(eta)``; ``g_flip[b, i] = dl/deta(eta^(i))``.

        Parameters
        ----------
        logits : array (B, K)
        y : int array (B,)
        x_last : array (B, N_L)
            Last binary states.
        v : array (K, N_L)
            Head weights.
        loss0 : array (B,)
            ``l(eta)`` of these logits (:meth:`softmax_xent`); a backend may compute ``d`` without it (the CPU
            backend's factored form does).

        Returns
        -------
        d : array (B, N_L)
        g_flip : array (B, N_L, K)
        """

    @abc.abstractmethod
    def rb_flip_weights(self, x_last, a_last, noise):
        """Rao-Blackwellization weights ``w_i = F(-x_i a_i) / N_L = (1 - F(x_i a_i)) / N_L`` (symmetric noise;
        :mod:`sbnnumba.estimators.rbhead`).

        Parameters
        ----------
        x_last, a_last : arrays (B, N_L)
        noise : NoiseFamily

        Returns
        -------
        array (B, N_L)
        """

    @abc.abstractmethod
    def rb_mix(self, w, q0, q_flip):
        """Mixture ``(1 - sum_i w_i) q0 + sum_i w_i q_flip[:, i]``.

        Parameters
        ----------
        w : array (B, N_L)
        q0 : array (B, K)
        q_flip : array (B, N_L, K)

        Returns
        -------
        array (B, K)
        """

    @abc.abstractmethod
    def rb_value(self, loss0, w, d):
        """Rao-Blackwellized loss ``l0 + sum_i w_i d_i`` per example.

        Parameters
        ----------
        loss0 : array (B,)
        w, d : arrays (B, N_L)

        Returns
        -------
        array (B,)
        """

    @abc.abstractmethod
    def rb_head_grads(self, g_eta, g_flip, w, x_last, weights):
        r"""Head parameter gradients of PSA's Rao-Blackwellized head (spec psa.md, section 2.6).

        With ``g = weights_b rb_mix(w, g_eta, g_flip)`` (B, K):
        ``dV = g^T x - 2 sum_b weights_b w_bi x_bi g_flip[b, i, :]``, ``dc = sum_b g``.

        Parameters
        ----------
        g_eta : array (B, K)
        g_flip : array (B, N_L, K)
        w, x_last : arrays (B, N_L)
        weights : array (B,)
            Per-example weights of the estimate.

        Returns
        -------
        dv : array (K, N_L)
        dc : array (K,)
        """

    def psa_rb_head(self, logits, y, x_last, v, loss0, g_eta, w, weights):
        """PSA's head differences and the Rao-Blackwellized head's parameter gradients in one operation: what
        :meth:`head_flips` and :meth:`rb_head_grads` give together (their composition, unless a backend computes
        it without the (B, N_L, K) flipped gradients: the CPU backend's factored form,
        :func:`sbnnumba.kernels.head.rb_head_gradients`).

        Parameters
        ----------
        logits : array (B, K)
        y : int array (B,)
        x_last : array (B, N_L)
        v : array (K, N_L)
        loss0 : array (B,)
            ``l(eta)``.
        g_eta : array (B, K)
            ``softmax(eta) - onehot(y)``.
        w : array (B, N_L)
            Rao-Blackwell weights (:meth:`rb_flip_weights`).
        weights : array (B,)
            Per-example weights of the estimate.

        Returns
        -------
        d : array (B, N_L)
        dv : array (K, N_L)
        dc : array (K,)
        """
        d, g_flip = self.head_flips(logits, y, x_last, v, loss0)
        dv, dc = self.rb_head_grads(g_eta, g_flip, w, x_last, weights)
        return d, dv, dc

    # -- element-wise, bookkeeping --------------------------------------------------------------
    @abc.abstractmethod
    def multiply(self, a, b):
        """Element-wise product ``a * b`` of two arrays of one shape (a new array)."""

    @abc.abstractmethod
    def scale_rows(self, t, scale):
        """``t[i, ...] * scale[i]``: rows of ``t`` (examples, or output units of a weight) times a scalar each.

        Parameters
        ----------
        t : array (R, ...)
        scale : array (R,)

        Returns
        -------
        array, the shape of ``t``
        """

    @abc.abstractmethod
    def weighted_sum(self, weights, values):
        """``sum_b weights_b values_b``.

        Parameters
        ----------
        weights, values : arrays (B,)

        Returns
        -------
        scalar (host) or a one-entry array on the backend's device
        """

    @abc.abstractmethod
    def asarray(self, x, dtype=None):
        """``x`` as an array of this backend in ``dtype`` (no copy when it already is one).

        Parameters
        ----------
        x : array-like
        dtype : numpy dtype, optional

        Returns
        -------
        array
        """

    @abc.abstractmethod
    def to_host(self, x):
        """``x`` as a NumPy array: a device array downloaded, a host array itself (no copy).

        Parameters
        ----------
        x : array (any shape)

        Returns
        -------
        ndarray, the shape and dtype of ``x``
        """

    @abc.abstractmethod
    def to_device_of(self, x, like):
        """The host array ``x`` where ``like`` lives: uploaded when ``like`` is a device array, else
        ``x`` itself (no copy). With :meth:`to_host` it brings small per-channel values through a
        host-side collective (data-parallel batch normalization).

        Parameters
        ----------
        x : ndarray (any shape)
        like : array
            An array of this backend (host or device).

        Returns
        -------
        array, the shape and dtype of ``x``
        """

    @abc.abstractmethod
    def loss_scalar(self, value):
        """The loss an estimator returns: a Python float for host values; a device backend keeps a device
        value on the device (a one-entry array, downloaded by whoever needs the number).

        Parameters
        ----------
        value : scalar or one-entry array

        Returns
        -------
        float, or a one-entry device array
        """


def step_operations():
    """The names of the training-step operations (sorted).

    Returns
    -------
    list of str
    """
    return sorted(StepOperations.__abstractmethods__)
