"""python -m qwen_triton.openai_api (see cli.py)."""
import sys

from .cli import main

sys.exit(main())
