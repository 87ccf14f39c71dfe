"""``python -m loadtest.report RUN_DIR``: see :mod:`loadtest.report.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
