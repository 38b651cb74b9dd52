r"""Sweeps: many independent training runs (learning rates, seeds, estimators) on any executor.

``sbnnumba.sweep.run(configs, executor=None, out=DIR)`` trains every configuration in its own run
directory and returns one table (:class:`SweepResult`); ``python -m sbnnumba sweep --grid
"estimator=psa,st lr=1e-3,3e-3 seed=0,1,2" --out DIR`` is the same from the command line.

* **Executors.** Any :class:`concurrent.futures.Executor` runs the runs: ``executor=None`` starts a
  local process pool whose ``workers x threads`` never exceeds the cores
  (:func:`~sbnnumba.sweep.executors.plan_workers`); a Dask cluster is ``distributed.Client(address)
  .get_executor()``, MPI ``mpi4py.futures.MPIPoolExecutor()``. The library never imports them: the
  executor object is passed in.
* **Configurations** are dicts of options (:mod:`sbnnumba.sweep.task` says which name goes to the
  network, the data and ``fit``); :func:`parse_grid` and :func:`expand` build them from
  ``"name=v1,v2 name=..."``.
* **Seeds** come from the sweep seed and the configuration's key by ``SeedSequence``
  (:func:`derive_seeds`): results do not depend on scheduling or on the number of workers; ``seed`` in a
  configuration is a replicate label.
* **Restarts.** ``fit`` checkpoints every epoch into the run directory: a rerun skips finished runs,
  resumes stopped ones (bit-identical to an uninterrupted run) and tries failed ones again. A worker that
  dies loses only its run's unfinished epoch; a failing configuration is reported with its error and the
  others go on.
* **Compilation.** The Numba kernels are compiled once in the calling process before fanning out
  (:func:`warm_numba`); workers load them from the on-disk cache.
"""
from .executors import LocalPool, SerialExecutor, local_executor, plan_workers, usable_cores
from .grid import config_key, derive_seeds, expand, parse_grid, parse_value, run_dir_name
from .runner import SweepResult, run, warm_numba
from .task import RunTask, execute, load_named_data, split_options

__all__ = ["run", "SweepResult", "warm_numba", "parse_grid", "parse_value", "expand", "config_key", "derive_seeds",
           "run_dir_name", "SerialExecutor", "LocalPool", "local_executor", "plan_workers", "usable_cores",
           "RunTask", "execute", "load_named_data", "split_options"]
