"""Export of trained binary networks out of the package.

* :func:`export_c` (:mod:`sbnnumba.export.c`): a :class:`~sbnnumba.PackedNetwork` as dependency-free
  C99 source (header, source, example ``main.c``, Makefile, README); also
  :meth:`PackedNetwork.export_c` and ``python -m sbnnumba export CHECKPOINT --format c --out DIR``.
* :func:`preactivations` (:mod:`sbnnumba.export.reference`): every stage's pre-threshold values as
  the packed network computes them, the reference the exported program is checked against.
"""
from .c import CExport, TraceSlot, export_c
from .reference import preactivations

__all__ = ["CExport", "TraceSlot", "export_c", "preactivations"]
