#!/usr/bin/env python3
"""``python tools/triton_server.py [--pid-file F] start|stop|status ...``: the Triton server CLI,
``python -m qwen_triton.runtime`` (qwen_triton/runtime/cli.py; docs/triton-runtime.md).

The interpreter must import qwen_triton: the project's venv (``pip install -e .``), a venv with a ``.pth``
to the checkout (tools/gpu_serve_check.py's), or ``PYTHONPATH=.`` from the checkout.
"""
import sys

from qwen_triton.runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
