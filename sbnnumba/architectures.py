"""Network factories registered by name: ``build(name, input_shape, n_classes, **options)``.

* ``"mlp"``: dense stages of the given hidden widths.
* ``"conv"``: the PSA paper's all-convolutional SBN (see :func:`conv`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np
import numpy.typing as npt

from .conv import Conv2d
from .layers import Linear, check_weight_options
from .network import Network, stage_weight_kinds
from .normalization import normalization_factory
from .validation import as_generator, check_float_dtype, check_positive_ints, check_positive_number

if TYPE_CHECKING:
    from .backends.base import Backend
    from .noise import NoiseFamily

ARCHITECTURES: dict[str, Callable] = {}
_Factory = TypeVar("_Factory", bound=Callable[..., Network])


def register_architecture(name: str) -> Callable[[_Factory], _Factory]:
    """Decorator registering a network factory under ``name`` for :func:`build` (and ``--arch`` of the CLI).

    Parameters
    ----------
    name : str
        Registry name; an existing entry of that name is replaced.

    Returns
    -------
    callable
        The decorator: it stores ``fn(input_shape, n_classes, **options) -> Network`` and returns ``fn``
        unchanged.
    """
    def deco(fn: _Factory) -> _Factory:
        ARCHITECTURES[name] = fn
        return fn
    return deco


@register_architecture("mlp")
def mlp(input_shape: tuple[int, ...], n_classes: int, hidden: Sequence[int] = (1024, 1024),
        noise: str | NoiseFamily = "logistic", rng: None | int | np.random.Generator = None,
        dtype: npt.DTypeLike = np.float32, backend: str | Backend | None = None, weight: str = "real",
        weight_noise: str | NoiseFamily = "logistic", weight_grad: str = "md", normalize: bool = False,
        bn_gamma: float | str = 1.0) -> Network:
    """Dense SBN: one binary stage per entry of ``hidden`` (on the flattened input), then a linear head.

    Layer sizes ``prod(input_shape) -> hidden[0] -> ... -> hidden[-1] -> n_classes``; each hidden stage
    computes ``x_l = sign(W_l x_{l-1} + b_l - Z_l)`` with noise ``Z_l`` of the family ``noise``.

    Parameters
    ----------
    input_shape : tuple of int
        Per-example input shape (flattened: ``K = prod(input_shape)`` inputs).
    n_classes : int
        Outputs of the linear head (logits).
    hidden : sequence of int
        Widths of the binary stages (at least one).
    noise : str or NoiseFamily
        Activation noise family (:func:`~sbnnumba.noise.get_noise`).
    rng : None, int or numpy.random.Generator
        Draws the initial weights.
    dtype : dtype
        Float dtype of the parameters (float32 or float64).
    backend : str or Backend, optional
        Where the network runs (default ``$SBNNUMBA_BACKEND`` or ``"cpu"``).
    weight, weight_noise, weight_grad, normalize, bn_gamma
        As :meth:`Network.dense <sbnnumba.network.Network.dense>` (e.g. ``weight="hidden", normalize=True``
        for the fully binary MLP of spec st.md).

    Returns
    -------
    Network
        ``len(hidden)`` binary stages and a real linear head.
    """
    input_shape = check_positive_ints(input_shape, "input_shape")
    hidden = check_positive_ints(hidden, "hidden", min_length=0)
    if len(hidden) == 0:
        raise ValueError("hidden: expected at least one hidden width")
    sizes = [math.prod(input_shape), *hidden]
    return Network.dense(sizes, n_classes, noise=noise, rng=as_generator(rng), dtype=dtype, backend=backend,
                         weight=weight, weight_noise=weight_noise, weight_grad=weight_grad, normalize=normalize,
                         bn_gamma=bn_gamma)


PAPER_CONV_KERNELS = (3, 3, 3, 3, 3, 3, 3, 1)
PAPER_CONV_STRIDES = (1, 1, 2, 1, 1, 2, 1, 1)
PAPER_CONV_CHANNELS = (96, 96, 96, 192, 192, 192, 192, 192)


@register_architecture("conv")
def conv(input_shape: tuple[int, int, int], n_classes: int, channels: Sequence[int] = PAPER_CONV_CHANNELS,
         noise: str | NoiseFamily = "logistic", rng: None | int | np.random.Generator = None,
         dtype: npt.DTypeLike = np.float32, backend: str | Backend | None = None, width: float = 1.0,
         weight: str = "real", weight_noise: str | NoiseFamily = "logistic", weight_grad: str = "md",
         normalize: bool = False, input_padding: int = 0, bn_gamma: float | str = 1.0) -> Network:
    r"""The PSA paper's all-convolutional SBN (spec psa.md, section 5.2).

    Eight stochastic binary conv stages (logistic noise by default, biases, no padding, no
    normalization): 3x3 kernels with strides 1, 1, 2, 1, 1, 2, 1, then a 1x1 stride-1 stage;
    a real linear head on the last map flattened in (C, H, W) order.

    ==========  ======  ======  ===============  ==============
    stage       kernel  stride  3x32x32 (paper)  1x28x28
    ==========  ======  ======  ===============  ==============
    1 (input)   3x3     1       96 x 30x30       96 x 26x26
    2           3x3     1       96 x 28x28       96 x 24x24
    3           3x3     2       96 x 13x13       96 x 11x11
    4           3x3     1       192 x 11x11      192 x 9x9
    5           3x3     1       192 x 9x9        192 x 7x7
    6           3x3     2       192 x 4x4        192 x 3x3
    7           3x3     1       192 x 2x2        192 x 1x1
    8 (last)    1x1     1       192 x 2x2        192 x 1x1
    head        linear          768 -> 10        192 -> 10
    ==========  ======  ======  ===============  ==============

    Parameters
    ----------
    input_shape : (C, H, W)
        Per-example input shape; every map must stay at least as large as the next kernel
        (H, W >= 27 for this layout), otherwise ValueError.
    n_classes : int
        Outputs of the linear head (logits).
    channels : sequence of 8 ints
        Output channels of the eight stages (default: the paper's 96, 96, 96, 192 x 5).
    width : float
        Multiplier applied to ``channels`` (``max(1, round(c * width))``; a finite positive number, NumPy
        scalars included); e.g. ``width=0.25`` gives
        24, 24, 24, 48, ... for a network that trains on a few CPU cores.
    noise, rng, dtype, backend
        As for :class:`~sbnnumba.network.Network`; ``rng`` draws the default uniform init
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the paper uses init seed 1).
    weight, weight_noise, weight_grad, normalize
        Binary-weight variant (spec st.md section 8): ``weight="hidden"`` gives Bernoulli weights to every
        stage but the first (real input), ``"bernoulli"`` to all stages; the head stays real.
        ``normalize=True`` puts batch normalization before every binary activation.
    bn_gamma : float or "noise-std"
        With ``normalize=True``: the starting ``gamma`` of every normalization (default 1);
        ``"noise-std"`` starts it at the activation noise's standard deviation
        (:func:`~sbnnumba.normalization.initial_gamma`).
    input_padding : int
        Zero padding of the first stage only (default 0, the paper's layout). ``input_padding=2`` on
        1x28x28 images is the same network as the paper's on 28x28 images zero-padded to 32x32 (the
        classic LeNet-5 treatment of MNIST): the maps keep the paper's sizes 30, 28, 13, 11, 9, 4, 2, 2
        and the head sees ``2 x 2 x channels[-1]`` features instead of ``1 x 1 x channels[-1]``.

    Returns
    -------
    Network
        Eight binary :class:`~sbnnumba.conv.Conv2d` stages (wrapped in normalization with ``normalize``)
        and a real :class:`~sbnnumba.layers.Linear` head.

    Notes
    -----
    The paper's data-dependent initialization is **not** applied here: call
    ``net.initialize_from_data(x_batch)`` (e.g. the first training batch of 64 images) after
    building; it rescales every stage per output channel to zero-mean, unit-variance
    pre-activations, propagating the mean response ``2F(a) - 1``.
    """
    channels = check_positive_ints(channels, "channels", min_length=0)
    if len(channels) != len(PAPER_CONV_KERNELS):
        raise ValueError(f"channels: expected {len(PAPER_CONV_KERNELS)} channel counts, got {channels!r}")
    width = check_positive_number(width, "width")
    scaled = [c * width for c in channels]
    if not all(math.isfinite(c) for c in scaled):
        raise ValueError(f"width: expected a finite positive multiplier of the channel counts, got {width!r}")
    channels = [max(1, int(round(c))) for c in scaled]
    if isinstance(input_padding, bool) or not (isinstance(input_padding, (int, np.integer)) and input_padding >= 0):
        raise ValueError(f"input_padding: expected a non-negative int, got {input_padding!r}")
    shape = check_positive_ints(input_shape, "input_shape", length=3)  # (C, H, W)
    dtype = check_float_dtype(dtype)
    rng = as_generator(rng)
    kinds = stage_weight_kinds(weight, len(channels))
    stage_options = check_weight_options(kinds, weight_noise, weight_grad)
    stage = normalization_factory(normalize, bn_gamma, noise)
    stages = []
    paddings = [int(input_padding)] + [0] * (len(channels) - 1)
    for c_out, k, s, kind, pad, options in zip(channels, PAPER_CONV_KERNELS, PAPER_CONV_STRIDES, kinds, paddings,
                                               stage_options):
        if min(shape[1:]) + 2 * pad < k:
            raise ValueError(f"input_shape: {tuple(input_shape)} is too small for the conv architecture "
                             f"(a {shape[1]}x{shape[2]} map reaches a {k}x{k} stage); need H, W >= 27")
        layer = Conv2d(shape[0], c_out, k, stride=s, padding=pad, rng=rng, dtype=dtype, in_shape=shape, weight=kind,
                       **options)
        stages.append(stage(layer))
        shape = layer.out_shape
    head = Linear(int(np.prod(shape)), n_classes, rng=rng, dtype=dtype)
    return Network(stages, head, noise=noise, backend=backend)


def build(name: str, input_shape: tuple[int, ...], n_classes: int, **options) -> Network:
    """Build the architecture registered under ``name``.

    Parameters
    ----------
    name : str
        A registered name (``"mlp"``, ``"conv"`` or one added with :func:`register_architecture`).
    input_shape : tuple of int
        Per-example input shape, e.g. ``(1, 28, 28)``.
    n_classes : int
        Outputs of the head.
    **options
        Keyword arguments of the factory (e.g. ``hidden=`` of :func:`mlp`, ``width=`` of :func:`conv`).

    Returns
    -------
    Network

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known names).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"arch: unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](input_shape, n_classes, **options)
