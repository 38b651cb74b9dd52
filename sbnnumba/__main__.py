"""``python -m sbnnumba {train,evaluate,export,gradcheck,sweep} ...`` (see :mod:`sbnnumba.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
