"""Serving layer: the Triton tensor contract and the Triton-free logic behind
each model of `model_repo/` (preprocessing, engine, postprocessing)."""
