"""``python -m qwen_triton.runtime start|stop|status``: see :mod:`qwen_triton.runtime.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
