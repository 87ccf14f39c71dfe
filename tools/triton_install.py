#!/usr/bin/env python3
"""``python tools/triton_install.py [--dest .triton] [--python .venv/bin/python] ...``: installs Triton
from the pinned nvidia-pytriton wheel, ``python -m qwen_triton.runtime.install``
(qwen_triton/runtime/install.py; docs/triton-runtime.md).

The interpreter must import qwen_triton: the project's venv (``pip install -e .``) or ``PYTHONPATH=.``.
"""
import sys

from qwen_triton.runtime.install import main

if __name__ == "__main__":
    sys.exit(main())
