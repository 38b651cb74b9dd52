"""Computational kernels: NumPy references (``reference``), Numba CPU (``cpu``), numba.cuda (``cuda``),
and bit-packed XNOR-popcount kernels (``bitpack``). Nothing here is compiled at import time."""
