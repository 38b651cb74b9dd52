"""``describe(net)``: a network's structure as a JSON-able dict, and the network rebuilt from it.

Checkpoints store this description (derived from the network when saving), so the network itself knows
nothing of checkpoints and any network made of registered layer kinds can be saved, however it was
built or converted (``to_bernoulli``, ``add_normalization``). The description holds structure only;
parameters and normalization statistics are loaded afterwards.

Layout::

    {"noise": "logistic", "dtype": "float32", "input_shape": [1, 28, 28] or None,
     "input": "uint8/255" (only when recorded: sbnnumba.inputs),
     "stages": [{"layer": "conv2d", "args": {"c_in": 1, "c_out": 96, "kernel_size": [3, 3], ...},
                 "weights": None or {"noise": "logistic", "grad": "md", "clip": None},
                 "normalization": None or {"momentum": 0.1, "eps": 1e-05}}, ...],
     "head": {"layer": "linear", "args": {"n_in": 192, "n_out": 10}}}

A new layer type becomes describable with :func:`register_layer_kind` (its name, class, the constructor
arguments it is rebuilt from, and the constructor call).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..conv import Conv2d
from ..inputs import check_convention
from ..layers import Linear
from ..network import Network
from ..normalization import Normalized
from ..weights import make_bernoulli

if TYPE_CHECKING:
    from ..backends.base import Backend


@dataclass(frozen=True)
class LayerKind:
    """How to describe and rebuild one affine layer type.

    Attributes
    ----------
    name : str
        The ``"layer"`` entry of its description.
    cls : type
        The layer class (matched exactly, not by subclass).
    arguments : callable ``layer -> dict``
        JSON-able constructor arguments that fix every parameter shape.
    build : callable ``(dict, dtype) -> layer``
        The constructor call (parameters are overwritten when a checkpoint is loaded).
    """

    name: str
    cls: type
    arguments: Callable
    build: Callable


LAYER_KINDS: dict[str, LayerKind] = {}


def register_layer_kind(name: str, cls: type, arguments: Callable[[Any], dict[str, Any]],
                        build: Callable[[dict[str, Any], np.dtype], Any]) -> None:
    """Make layers of type ``cls`` describable under ``name`` (see :class:`LayerKind`).

    Parameters
    ----------
    name : str
        The ``"layer"`` entry of its descriptions (an existing kind of that name is replaced).
    cls : type
        The layer class (matched exactly, not by subclass).
    arguments : callable ``layer -> dict``
        JSON-able constructor arguments that fix every parameter shape.
    build : callable ``(dict, dtype) -> layer``
        The constructor call.
    """
    LAYER_KINDS[name] = LayerKind(name, cls, arguments, build)


register_layer_kind("linear", Linear, lambda l: {"n_in": int(l.n_in), "n_out": int(l.weight.shape[0])},
                    lambda a, dtype: Linear(a["n_in"], a["n_out"], rng=0, dtype=dtype))
register_layer_kind(
    "conv2d", Conv2d,
    lambda l: {"c_in": int(l.c_in), "c_out": int(l.c_out), "kernel_size": list(l.kernel_size),
               "stride": list(l.stride), "padding": list(l.padding)},
    lambda a, dtype: Conv2d(a["c_in"], a["c_out"], tuple(a["kernel_size"]), stride=tuple(a["stride"]),
                            padding=tuple(a["padding"]), rng=0, dtype=dtype))


def _kind_of(layer, where):
    for kind in LAYER_KINDS.values():
        if type(layer) is kind.cls:
            return kind
    raise TypeError(f"{where}: expected a layer of a registered kind ({sorted(LAYER_KINDS)}), got "
                    f"{type(layer).__name__}; register it with sbnnumba.training.description.register_layer_kind")


def _describe_layer(layer, where):
    kind = _kind_of(layer, where)
    return {"layer": kind.name, "args": kind.arguments(layer)}


def _describe_stage(stage, where):
    norm = None
    if type(stage) is Normalized:
        norm = {"momentum": float(stage.momentum), "eps": float(stage.eps)}
        stage = stage.layer
    desc = _describe_layer(stage, where)
    latent = stage.latent
    desc["weights"] = None if latent is None else {"noise": latent.noise.name, "grad": latent.grad,
                                                   "clip": latent.clip}
    desc["normalization"] = norm
    return desc


def describe(net: Network, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The structure of ``net`` as a JSON-able dict (see the module docstring).

    Parameters
    ----------
    net : Network
        Made of registered layer kinds.
    input_shape : tuple of int, optional
        Per-example input shape, recorded so that conv layers know their map sizes when rebuilt.

    Returns
    -------
    dict
        ``noise``, ``dtype``, ``input_shape``, ``stages`` (one dict per stage), ``head`` and, where
        recorded, ``input`` (the input convention).

    Raises
    ------
    TypeError
        A stage or the head is of a layer type without a registered :class:`LayerKind`.
    """
    desc = {"noise": net.noise.name, "dtype": np.dtype(net.dtype).name,
            "input_shape": None if input_shape is None else [int(s) for s in input_shape],
            "stages": [_describe_stage(s, f"stages.{k}") for k, s in enumerate(net.stages)],
            "head": _describe_layer(net.head, "head")}
    if net.input_convention is not None:  # absent from descriptions written before it was recorded (#41)
        desc["input"] = net.input_convention
    return desc


def _build_layer(desc, dtype, where):
    try:
        kind = LAYER_KINDS[desc["layer"]]
    except KeyError:
        raise ValueError(f"{where}: expected a layer kind among {sorted(LAYER_KINDS)}, got "
                         f"{desc.get('layer')!r}") from None
    return kind.build(desc["args"], dtype)


def network_from_description(desc: dict[str, Any], backend: str | Backend | None = None) -> Network:
    """Build a network (parameters freshly initialized, to be loaded) from :func:`describe`'s dict.

    Parameters
    ----------
    desc : dict
        As returned by :func:`describe` (read from a checkpoint).
    backend : str or Backend, optional
        Where the network runs.

    Returns
    -------
    Network
        Same structure, noise, dtype and input convention; parameters to be overwritten.

    Raises
    ------
    ValueError
        An entry is missing or names an unknown layer kind.
    """
    try:
        dtype = np.dtype(desc["dtype"])
        stages = []
        for k, sd in enumerate(desc["stages"]):
            layer = _build_layer(sd, dtype, f"stages.{k}")
            if sd.get("weights") is not None:
                w = sd["weights"]
                make_bernoulli(layer, noise=w["noise"], grad=w["grad"], clip=w["clip"], rng=0)
            if sd.get("normalization") is not None:
                layer = Normalized(layer, momentum=sd["normalization"]["momentum"], eps=sd["normalization"]["eps"])
            stages.append(layer)
        net = Network(stages, _build_layer(desc["head"], dtype, "head"), noise=desc["noise"], backend=backend)
    except KeyError as exc:
        raise ValueError(f"description: expected the entry {exc}, which is missing") from None
    if desc.get("input_shape") is not None:
        net.stage_shapes(tuple(desc["input_shape"]))  # conv layers record their map sizes
    net.input_convention = check_convention(desc.get("input"), "description: input")
    return net
