"""The build's quantization step for our engine: the resolved checkpoint in, the quantized checkpoint
(qwen_triton.quant.convert) out, under <artifacts>/quant/, rebuilt only when its source or spec changed."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from qwen_triton.quant.spec import QuantSpec

from .settings import Settings

STAMP_FILE = "build_stamp.json"
FP8_MIN_CAPABILITY = (8, 9)  # float8 matrix units: Ada and Hopper


class QuantizeError(RuntimeError):
    """A quantization the build cannot do, with the reason."""


def check_device(spec: QuantSpec, device: str) -> str | None:
    """Raise when the engine's device cannot run `spec`; a warning when the build cannot tell."""
    if spec.weights != "fp8" and spec.kv_cache != "fp8":
        return None
    if device == "cpu":
        return None  # the reference path rounds through float8 on any CPU
    import torch

    if not torch.cuda.is_available():
        if device == "auto":
            return None  # served on this machine's CPU
        return f"fp8 on {device}: no GPU here to check; it needs compute capability >= 8.9 (Ada, Hopper)"
    index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
    capability = torch.cuda.get_device_capability(index)
    if capability < FP8_MIN_CAPABILITY:
        raise QuantizeError(f"fp8 needs a GPU of compute capability >= 8.9 (Ada, Hopper); "
                            f"{torch.cuda.get_device_name(index)} is {capability[0]}.{capability[1]}: "
                            "use int8_wo, int4_wo or w8a8")
    return None


def _fingerprint(checkpoint: Path, spec: QuantSpec) -> dict:
    files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    listing = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    return {"source": str(checkpoint.resolve()), "files": listing, "spec": spec.to_json()}


def _folder_name(checkpoint: Path, spec: QuantSpec) -> str:
    tag = spec.weights + (f"-g{spec.group_size}" if spec.weights == "int4_wo" else "")
    if spec.kv_cache != "auto":
        tag += f"-kv{spec.kv_cache}"
    digest = hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{checkpoint.name}-{tag}-{digest}"


def quantized_checkpoint(settings: Settings, checkpoint: Path, say: Callable[..., None]) -> Path:
    """The checkpoint our engine loads: `checkpoint` itself when nothing is quantized, else its quantized
    copy under <artifacts>/quant/ (written now, or reused when source and spec are unchanged)."""
    spec = settings.quant_spec()
    if settings.engine != "qwen_triton" or not spec.is_quantized:
        return checkpoint
    warning = check_device(spec, settings.limits.device)
    if warning:
        say(f"warning: {warning}")
    dst = Path(settings.paths.artifacts).resolve() / "quant" / _folder_name(checkpoint, spec)
    stamp = json.loads(json.dumps(_fingerprint(checkpoint, spec)))  # as it reads back (tuples are lists)
    stamp_file = dst / STAMP_FILE
    if stamp_file.exists() and json.loads(stamp_file.read_text(encoding="utf-8")) == stamp:
        say(f"quantization: {dst} is up to date")
        return dst
    from qwen_triton.quant.convert import quantize_checkpoint

    say(f"quantization: {spec.weights}, kv cache {spec.kv_cache} -> {dst}")
    quantize_checkpoint(checkpoint, dst, spec, say=say)
    stamp_file.write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    return dst
