"""Checkpoints: atomic save, checked load, and the network rebuilt from its description.

Format (version 2)
------------------
One ``.npz`` (no pickles) with ``meta/format`` = ``"sbnnumba-checkpoint"``, ``meta/version`` = 2,
``meta/epoch`` (completed epochs), ``meta/rng_state`` (JSON of the training generator's
``bit_generator.state``), ``meta/history`` and ``meta/config`` (JSON), ``param/<key>`` (the parameters),
``buffer/<key>`` (normalization statistics) and ``optim/<key>`` (the optimizer's ``state_dict``).
The config holds ``network`` (:func:`~sbnnumba.training.description.describe` of the network when it was
saved), ``data`` (name and fingerprints of the training and validation arrays), ``fit``
(:meth:`FitConfig.to_dict`), ``optimizer`` (its hyperparameters), ``backend`` and ``metadata``.
Resuming restores parameters, optimizer state and generator state, so a resumed run reproduces an
uninterrupted one bit for bit, at any thread count with OpenBLAS (the layers' products are fixed blocks of
single-threaded BLAS calls, :func:`sbnnumba.runtime.gemm`: ``docs/robustness.md``).

Version 1 (before the training package) stored the architecture's name and builder options under
``config["arch"]`` and the fit options at the top level of the config; such files still load: the
network is built by :func:`sbnnumba.architectures.build` and the config is read into the version-2
layout (:func:`_config_from_v1`), so they can also be evaluated and resumed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import architectures
from ..fileio import atomic_write, read_versioned_npz
from ..validation import nonfinite_keys
from .config import field_names
from .description import describe, network_from_description

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..network import Network
    from ..optim import Optimizer

FORMAT = "sbnnumba-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CHECKPOINT_NAME = "checkpoint.npz"


class CheckpointError(ValueError):
    """A checkpoint file is missing entries, has the wrong format/version, or is corrupt."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file (see the module docstring); ``config`` in the version-2 layout.

    Attributes
    ----------
    path : str
        The file it was read from.
    epoch : int
        Completed epochs.
    params : dict str -> ndarray
        The network's parameters by name (``param/<key>``).
    optimizer_state : dict
        The optimizer's ``state_dict`` (``optim/<key>``).
    rng_state : dict
        ``bit_generator.state`` of the training generator (:func:`generator_from_state`).
    history : list of dict
        Per-epoch metrics so far.
    config : dict
        ``network``, ``data``, ``fit``, ``optimizer``, ``backend``, ``metadata`` (see the module docstring).
    buffers : dict str -> ndarray
        Normalization statistics (``buffer/<key>``).
    version : int
        Format version of the file (1 or 2).
    """

    path: str
    epoch: int
    params: dict
    optimizer_state: dict
    rng_state: dict
    history: list
    config: dict
    buffers: dict = field(default_factory=dict)
    version: int = FORMAT_VERSION


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays/dtypes turned into plain Python (dict keys as str).

    Parameters
    ----------
    obj : object
        Nested dicts, lists and tuples of numbers, strings, NumPy scalars, arrays and dtypes.

    Returns
    -------
    object
        The same structure with dicts (str keys), lists, Python scalars and dtype names, for ``json``.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.dtype, type)):
        return np.dtype(obj).name
    return obj


def dumps(obj: Any) -> str:
    """JSON text of :func:`jsonable` of ``obj`` (dict keys in insertion order).

    Parameters
    ----------
    obj : object
        As for :func:`jsonable`.

    Returns
    -------
    str
    """
    return json.dumps(jsonable(obj))  # insertion order: a resumed history keeps its CSV columns


def generator_from_state(state: dict[str, Any]) -> np.random.Generator:
    """A ``numpy.random.Generator`` continuing from a saved ``bit_generator.state``.

    Parameters
    ----------
    state : dict
        ``generator.bit_generator.state`` (names its bit generator, e.g. ``"PCG64"``).

    Returns
    -------
    numpy.random.Generator
        Draws the same numbers the saved generator would have drawn next.
    """
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)


def save_checkpoint(path: str | os.PathLike[str], net: Network, optimizer: Optimizer, rng: np.random.Generator,
                    epoch: int, history: list[dict[str, Any]], config: dict[str, Any]) -> str:
    """Write a checkpoint atomically (see the module docstring for the format).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    net : Network
        Its parameters and buffers are stored.
    optimizer : Optimizer
        Its ``state_dict`` is stored.
    rng : numpy.random.Generator
        The training generator; its state is stored.
    epoch : int
        Completed epochs.
    history : list of dict
        Per-epoch metrics.
    config : dict
        The run's configuration (version-2 layout).

    Returns
    -------
    str
        ``path`` as a string.
    """
    arrays: dict[str, Any] = {"meta/format": np.array(FORMAT), "meta/version": np.array(FORMAT_VERSION),
              "meta/epoch": np.array(int(epoch)),
              "meta/rng_state": np.array(dumps(rng.bit_generator.state)),
              "meta/history": np.array(dumps(history)), "meta/config": np.array(dumps(config))}
    for k, p in net.params.items():
        arrays[f"param/{k}"] = p
    for k, b in net.buffers.items():
        arrays[f"buffer/{k}"] = b
    for k, v in optimizer.state_dict().items():
        arrays[f"optim/{k}"] = np.array(v) if not (isinstance(v, list) and not v) else np.array([], dtype=str)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


_REQUIRED = ("meta/format", "meta/version", "meta/epoch", "meta/rng_state", "meta/history", "meta/config",
             "optim/optimizer", "optim/step_count", "optim/keys")


def _network_from_v1(spec, backend=None):
    """The network of a version-1 architecture spec ``{"name", "options", "input_shape", "n_classes", "dtype"}``."""
    return architectures.build(spec["name"], tuple(spec["input_shape"]), int(spec["n_classes"]), rng=0,
                               dtype=np.dtype(spec.get("dtype", "float32")), backend=backend,
                               **spec.get("options", {}))


def _config_from_v1(config):
    """A version-1 config in the version-2 layout: the network described, the fit options under ``fit``."""
    spec = config["arch"]
    fit = {k: config[k] for k in field_names() if k in config and k != "optimizer"}  # that one: hyperparameters
    if fit.get("augment_pad") is None:  # version 1 stored None without augmentation
        fit["augment_pad"] = 4
    metadata = {**config.get("metadata", {}),
                "architecture": {"name": spec["name"], "options": spec.get("options", {})}}
    return {"format_version": 1, "network": describe(_network_from_v1(spec), spec["input_shape"]),
            "data": config.get("data", {}), "fit": fit, "optimizer": config.get("optimizer", {}),
            "backend": config.get("backend"), "metadata": metadata}


def _read_config(z, version, path):
    config = json.loads(str(z["meta/config"]))
    if version == 1:
        if "arch" not in config:
            raise CheckpointError(f"{path}: checkpoint config lacks the architecture ('arch')")
        try:
            return _config_from_v1(config)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: version-1 architecture entry unusable ({type(exc).__name__}: "
                                  f"{exc})") from None
    if "network" not in config:
        raise CheckpointError(f"{path}: checkpoint config lacks the network description ('network')")
    return config


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and check a checkpoint file (version 2, or version 1 read into the version-2 layout).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.

    Returns
    -------
    Checkpoint

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        Not an sbnnumba checkpoint, an unreadable format version, missing entries, or a corrupt /
        truncated file. The message names the file and the problem.
    """
    path = os.fspath(path)
    version, z = read_versioned_npz(path, FORMAT, READABLE_VERSIONS, CheckpointError, "sbnnumba checkpoint",
                                    article="an")
    missing = [k for k in _REQUIRED if k not in z]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks the entries {missing}")

    def prefixed(prefix):
        return {k[len(prefix):]: z[k] for k in sorted(z) if k.startswith(prefix)}

    params = prefixed("param/")
    if not params:
        raise CheckpointError(f"{path}: checkpoint holds no parameters ('param/...' entries)")
    try:
        return Checkpoint(path=path, epoch=int(z["meta/epoch"]), params=params, optimizer_state=prefixed("optim/"),
                          rng_state=json.loads(str(z["meta/rng_state"])), history=json.loads(str(z["meta/history"])),
                          config=_read_config(z, version, path), buffers=prefixed("buffer/"), version=version)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {exc})") from None


def _load_params(net, params, where):
    own = net.params
    if set(own) != set(params):
        raise CheckpointError(f"{where}: parameter names differ from the network's: missing "
                              f"{sorted(set(own) - set(params))}, unexpected {sorted(set(params) - set(own))}")
    for k, p in own.items():
        value = params[k]
        if p.shape != value.shape:
            raise CheckpointError(f"{where}: parameter {k!r} has shape {value.shape}, the network "
                                  f"expects {p.shape}")
        if value.dtype.kind != "f":  # a hand-made file: integers or objects would load as something else
            raise CheckpointError(f"{where}: parameter {k!r} has dtype {value.dtype}, expected floating-point values")
    # training never saves these (it stops at the first non-finite value); checked before any is loaded
    bad = nonfinite_keys({k: params[k] for k in own})
    if bad:
        raise CheckpointError(f"{where}: parameter {bad[0]!r} holds NaN or inf")
    for k, p in own.items():
        p[...] = params[k]


def load_state(net: Network, ck: Checkpoint) -> None:
    """Parameters and buffers (normalization statistics) of a :class:`Checkpoint` into ``net``.

    Parameters
    ----------
    net : Network
        Receives the values in place; must have the same parameter names and shapes.
    ck : Checkpoint
        The source.

    Raises
    ------
    CheckpointError
        Different parameter names or shapes, non-float or non-finite values, or unusable buffers.
    """
    _load_params(net, ck.params, ck.path)
    try:
        net.load_buffers(ck.buffers or {})
    except ValueError as exc:
        raise CheckpointError(f"{ck.path}: {exc}") from None


def load_network(checkpoint: str | os.PathLike[str] | Checkpoint, backend: str | Backend | None = None) -> Network:
    """Rebuild the network stored in a checkpoint (a path or a :class:`Checkpoint`) with its parameters.

    Parameters
    ----------
    checkpoint : str, os.PathLike or Checkpoint
        A file (read with :func:`load_checkpoint`) or a checkpoint already read.
    backend : str or Backend, optional
        Where the network runs (default ``$SBNNUMBA_BACKEND`` or ``"cpu"``).

    Returns
    -------
    Network
        Built from ``config["network"]`` (:func:`~sbnnumba.training.description.network_from_description`),
        with the stored parameters and buffers.

    Raises
    ------
    CheckpointError
        If the network cannot be rebuilt or the parameters do not fit it.
    """
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    try:
        net = network_from_description(ck.config["network"], backend=backend)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{ck.path}: cannot rebuild the network ({exc})") from None
    load_state(net, ck)
    return net
