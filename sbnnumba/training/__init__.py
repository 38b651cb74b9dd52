"""Training of SBNs: :func:`fit` (a :class:`Trainer` in phases under a :class:`FitConfig`), evaluation,
checkpoints, history files and the learning-rate search.

Layout (one purpose per module):

* ``config.py``: :class:`FitConfig`, every option of :func:`fit`, validated in one place;
* ``fit.py``: :class:`Trainer` (prepare, resume / start, run an epoch, validate, save), :func:`fit`;
* ``device.py``: the one place that routes an epoch to the device-resident GPU step;
* ``data.py``: the train/validation split, float batches, data fingerprints;
* ``evaluation.py``: :func:`evaluate` (Rao-Blackwellized head, ensembles, unit entropy), :func:`unit_entropy`;
* ``checkpoint.py``: atomic save, checked load (format versions 1 and 2), :func:`load_network`;
* ``description.py``: :func:`describe` (a network's structure, derived when saving) and its inverse;
* ``history.py``: ``history.csv`` / ``history.json``, plots, the per-epoch summary line;
* ``lr_search.py``: :func:`search_lr`, the per-method learning-rate search.
"""
from .checkpoint import (
    CHECKPOINT_NAME,
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_network,
    save_checkpoint,
)
from .config import FitConfig
from .description import describe, network_from_description, register_layer_kind
from .evaluation import evaluate, unit_entropy
from .fit import FitResult, Trainer, TrainingDiverged, fit
from .history import HISTORY_CSV, HISTORY_JSON, TIMING_KEYS, write_history
from .lr_search import LRSearchResult, LRTrial, search_lr

__all__ = [
    "FORMAT", "FORMAT_VERSION", "CHECKPOINT_NAME", "HISTORY_CSV", "HISTORY_JSON", "TIMING_KEYS",
    "FitConfig", "Trainer", "fit", "FitResult", "TrainingDiverged",
    "Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "load_network",
    "describe", "network_from_description", "register_layer_kind",
    "evaluate", "unit_entropy", "write_history", "LRTrial", "LRSearchResult", "search_lr",
]
