"""``python -m sbnnumba {train,evaluate,gradcheck} ...`` (see :mod:`sbnnumba.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
