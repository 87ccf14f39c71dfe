"""Quantization: the modes of a quantized checkpoint (spec.py), their stored formats and references
(formats.py), the layers that run them (linear.py), and the build's converter (convert.py)."""
