r"""Plain NumPy reference for convolutional layers: im2col / col2im and the PSA conv flip propagation.

A 2-D convolution is a dense layer applied to every receptive field ("patch"):

* ``im2col`` turns a map ``x`` (B, C, H, W) into the patch matrix (B * H_out * W_out, C * kh * kw),
  one row per output position ``j = (b, oy, ox)``, columns in (C, kh, kw) order, so that
  ``a[b, :, oy, ox] = W.reshape(C_out, -1) @ row + bias``;
* ``col2im`` is its transpose: it sums the entries of such a matrix back onto the input positions,
  dropping the zero-padding positions.

The PSA flip propagation through a conv layer (spec psa.md, section 2.10),

.. math::

    d^{in}[b,r,i] = \sum_c \sum_{j : i \in RF(j)} \Delta[(r,i) \to (c,j)]\, d^{out}[b,c,j], \qquad
    \Delta = F(-x[c,j](a[c,j] - 2 W[c,r,off]\, x[r,i])) - F(-x[c,j]\, a[c,j]),

is therefore the dense routine :func:`sbnnumba.kernels.reference.flip_propagate_dense` run on the
patch matrix (each patch is the input vector of a dense layer whose weights are the flattened
kernel and whose outputs are the ``C_out`` channels at that position), followed by ``col2im``.
Padded entries of a patch are constants 0: their Delta is 0 and ``col2im`` drops them anyway, so
they never flip and receive no ``d``. These functions materialize (B*P, C*kh*kw) patches and a
(B*P, C*kh*kw, C_out) Delta tensor: for tests and small shapes only.
"""
import numpy as np

from . import reference


def output_size(in_hw, kernel_size, stride, padding):
    """(H_out, W_out) = ((H + 2 ph - kh) // sh + 1, (W + 2 pw - kw) // sw + 1); may be <= 0 if too small.

    Parameters
    ----------
    in_hw : (int, int)
        Input height and width.
    kernel_size, stride, padding : (int, int)
        Kernel size, stride and zero padding, (vertical, horizontal).

    Returns
    -------
    tuple of (int, int)
    """
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(in_hw, kernel_size, stride, padding))


def windows(x, kernel_size, stride, padding):
    """Strided view (B, C, H_out, W_out, kh, kw) of the zero-padded map ``x``: ``[..., oy, ox, dy, dx]`` is
    ``x_padded[..., sh*oy + dy, sw*ox + dx]``. Only the padding is copied.

    Parameters
    ----------
    x : ndarray, shape (B, C, H, W)
        Input maps.
    kernel_size, stride, padding : (int, int)
        Kernel size, stride and zero padding, (vertical, horizontal).

    Returns
    -------
    ndarray, shape (B, C, H_out, W_out, kh, kw)
        A read-only view (of a padded copy when ``padding`` is not zero).
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return win[:, :, ::sh, ::sw]


def im2col(x, kernel_size, stride, padding):
    """Patch matrix (B * H_out * W_out, C * kh * kw) of ``x`` (B, C, H, W); rows ordered (b, oy, ox),
    columns (c, dy, dx) like ``weight.reshape(C_out, -1)``.

    Parameters
    ----------
    x : ndarray, shape (B, C, H, W)
        Input maps.
    kernel_size, stride, padding : (int, int)
        Kernel size, stride and zero padding, (vertical, horizontal).

    Returns
    -------
    ndarray, shape (B * H_out * W_out, C * kh * kw)
        ``cols[(b, oy, ox), (c, dy, dx)] = x_pad[b, c, sh*oy + dy, sw*ox + dx]``.
    """
    win = windows(x, kernel_size, stride, padding)
    b, c, ho, wo, kh, kw = win.shape
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(b * ho * wo, c * kh * kw)


def col2im(cols, in_shape, kernel_size, stride, padding):
    """Transpose of :func:`im2col`: sum the patch entries (B * H_out * W_out, C * kh * kw) back onto the
    input positions of a (B, C, H, W) map (``in_shape`` = (C, H, W)); padded positions are dropped.

    Parameters
    ----------
    cols : ndarray, shape (B * H_out * W_out, C * kh * kw)
        Patch-matrix values (e.g. the gradient with respect to :func:`im2col`'s output).
    in_shape : (int, int, int)
        ``(C, H, W)``.
    kernel_size, stride, padding : (int, int)
        As for :func:`im2col`.

    Returns
    -------
    ndarray, shape (B, C, H, W), dtype of ``cols``
    """
    c, h, w = in_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    ho, wo = output_size((h, w), kernel_size, stride, padding)
    b = cols.shape[0] // (ho * wo)
    cols = cols.reshape(b, ho, wo, c, kh, kw)
    out = np.zeros((b, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for dy in range(kh):
        for dx in range(kw):
            out[:, :, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw] += \
                cols[:, :, :, :, dy, dx].transpose(0, 3, 1, 2)
    return out[:, :, ph:ph + h, pw:pw + w]


def conv_forward(x, weight, bias, stride, padding):
    """``a[b, c, oy, ox] = sum_{r, dy, dx} W[c, r, dy, dx] x_pad[b, r, sh*oy + dy, sw*ox + dx] + bias[c]``.

    NumPy reference of a convolution layer's forward pass (:func:`im2col` and one matrix product).

    Parameters
    ----------
    x : ndarray, shape (B, C_in, H, W)
        Input maps.
    weight : ndarray, shape (C_out, C_in, kh, kw)
        Kernels.
    bias : ndarray, shape (C_out,)
        Biases.
    stride, padding : (int, int)
        Vertical and horizontal stride and zero padding.

    Returns
    -------
    ndarray, shape (B, C_out, H_out, W_out)
        A transposed view (not C-contiguous).
    """
    c_out, _, kh, kw = weight.shape
    ho, wo = output_size(x.shape[2:], (kh, kw), stride, padding)
    cols = im2col(x, (kh, kw), stride, padding)
    a = cols @ weight.reshape(c_out, -1).T + bias
    return a.reshape(x.shape[0], ho, wo, c_out).transpose(0, 3, 1, 2)


def _rows(t):
    """(B, C, H_out, W_out) -> (B * H_out * W_out, C): one dense 'example' per output position."""
    return t.transpose(0, 2, 3, 1).reshape(-1, t.shape[1])


def flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, noise):
    r"""PSA flip propagation through a conv layer, by the dense reference on im2col patches.

    Parameters
    ----------
    x_in : (B, C_in, H, W) +-1 input states;  a, x_out, d_out : (B, C_out, H_out, W_out);
    weight : (C_out, C_in, kh, kw);  stride, padding : (int, int);  noise : name or family.

    Returns
    -------
    d_in : (B, C_in, H, W) in the dtype of ``a``; zero padding positions are dropped.
    """
    c_out, c_in, kh, kw = weight.shape
    patches = im2col(x_in, (kh, kw), stride, padding)
    d_cols = reference.flip_propagate_dense(patches, _rows(a), _rows(x_out), weight.reshape(c_out, -1),
                                            _rows(d_out), noise)
    return col2im(d_cols, x_in.shape[1:], (kh, kw), stride, padding).astype(a.dtype, copy=False)
