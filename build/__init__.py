"""The qwen-triton build step: settings -> default checkpoint -> model repository.

Run it from the repository root as ``python -m build`` (this package is not installed; its name
shadows PyPA's ``build`` only when the repository root is first on ``sys.path``, which is what
``python -m`` does for the current directory). See ``python -m build --help``.

Modules:
  settings            the one typed schema of everything the build writes
  default_checkpoint  the embedded tiny random-weight Qwen2 with the real Qwen vocabulary
  render              config.pbtxt files from qwen_triton/serving/contract.py, written and re-checked
  trtllm              the TensorRT-LLM variant (C++ backend config, engine build script)
"""
