"""GGUF -> a safetensors checkpoint folder that our engine and transformers both load.

    ckpt = import_gguf(Path("model.gguf"), Path("artifacts"))   # artifacts/gguf/<stem>-<sha12>/

What is written, once per GGUF file (a folder whose manifest matches the file's checksum is reused):
- `model-0000N-of-0000M.safetensors` + index: every tensor dequantized with the `gguf` package's own
  dequantizers (`gguf.quants.dequantize`), renamed to Hugging Face names, stored as STORED_DTYPE;
  LLaMA's q/k rows are put back in Hugging Face's rotary layout (llama.cpp's converter permutes them);
- `config.json` / `generation_config.json` from the GGUF metadata (`gguf_config.py`);
- the tokenizer (`tokenizer.json`, `tokenizer_config.json` with the GGUF's `add_bos_token`,
  `chat_template.jinja`), built from the GGUF's vocabulary by transformers' own GGUF tokenizer
  converter, so that tokenization and chat templates are transformers' by construction;
- `gguf_manifest.json`: the source file, its size and sha256, and the sha256 of every file written.

Tensors are converted one at a time and written in shards of at most SHARD_BYTES, so peak memory is
about one shard plus the memory-mapped GGUF, whatever the model's size.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gguf_config import GGUFError, GGUFMeta, hf_config, hf_generation_config

MANIFEST = "gguf_manifest.json"
FORMAT_VERSION = 1
# float32 holds every dequantized value exactly (each is a float16 scale times a small integer, plus an
# offset). Measured on the real Qwen2.5-0.5B (docs/accuracy.md): float16 storage changes 0.1% and bfloat16
# 0.6% of the greedy next-token choices over plain text, so neither "loses nothing"; and the engine runs
# float32 on the CPU anyway, where it is also the fastest (docs/benchmarks.md).
STORED_DTYPE = "float32"
SHARD_BYTES = 1 << 29  # 512 MiB

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


@dataclass(frozen=True)
class ImportedCheckpoint:
    path: Path
    created: bool      # False: an existing folder matched the GGUF's checksum
    seconds: float


def find_gguf(path: Path) -> Path | None:
    """`path` itself when it is a .gguf file, the one .gguf inside a folder, else None.
    Raises GGUFError for a folder holding several."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise GGUFError(f"{path} holds {len(found)} GGUF files; name one: MODEL={found[0]}")
    return found[0] if found else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hf_tensor_name(gguf_name: str) -> str:
    """The Hugging Face name of a GGUF tensor; GGUFError for one we do not know."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    head, _, rest = gguf_name.partition(".")
    layer, _, suffix = rest.partition(".")
    if head == "blk" and layer.isdigit() and suffix in _LAYER_NAMES:
        return f"model.layers.{layer}.{_LAYER_NAMES[suffix]}"
    raise GGUFError(f"tensor {gguf_name!r} has no counterpart in the engine's models")


def unpermute_rotary(weight, num_heads: int):
    """Undo llama.cpp's q/k permutation for LLaMA. [out, in] rows per head go from interleaved pairs
    (llama.cpp) back to two halves (Hugging Face's rotate-half layout)."""
    out = weight.shape[0]
    half = out // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensors(reader, meta: GGUFMeta, dtype) -> Iterator[tuple[str, Any]]:
    """(HF name, float tensor) for every GGUF tensor, dequantized and converted one at a time."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # derived from the rope settings in config.json
            continue
        name = hf_tensor_name(t.name)
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists the innermost dimension first
        values = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if meta.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = meta.num_heads if name.endswith("q_proj.weight") else meta.num_kv_heads
            values = unpermute_rotary(values, heads)
        yield name, torch.from_numpy(np.require(values, requirements=["C", "W"])).to(dtype)


def _write_weights(reader, meta: GGUFMeta, dest: Path, dtype_name: str) -> None:
    """Shards of at most SHARD_BYTES plus `model.safetensors.index.json`, as transformers writes them."""
    import torch
    from safetensors.torch import save_file

    def save(tensors: dict[str, Any], number: int) -> None:
        save_file(tensors, str(dest / f"part-{number}.tmp"), metadata={"format": "pt"})

    shard: dict[str, Any] = {}
    shard_bytes = total_bytes = 0
    names_by_shard: list[list[str]] = [[]]
    for name, tensor in _tensors(reader, meta, getattr(torch, dtype_name)):
        nbytes = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + nbytes > SHARD_BYTES:
            save(shard, len(names_by_shard))
            shard, shard_bytes = {}, 0
            names_by_shard.append([])
        shard[name] = tensor
        shard_bytes += nbytes
        total_bytes += nbytes
        names_by_shard[-1].append(name)
    save(shard, len(names_by_shard))
    weight_map = {}
    for number, names in enumerate(names_by_shard, start=1):
        final = f"model-{number:05d}-of-{len(names_by_shard):05d}.safetensors"
        os.replace(dest / f"part-{number}.tmp", dest / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _write_tokenizer(gguf_path: Path, dest: Path, meta: GGUFMeta) -> None:
    """transformers builds the tokenizer from the GGUF's vocabulary; we add what it leaves out."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(dest))
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # transformers 5 drops add_bos_token on save; the serving side reads it from here (chat/defaults.py)
    config["add_bos_token"] = meta.add_bos_token
    config.pop("local_files_only", None)
    config.pop("is_local", None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _manifest_head(gguf_path: Path, digest: str, dtype_name: str) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "source": gguf_path.name, "source_bytes": gguf_path.stat().st_size,
            "source_sha256": digest, "stored_dtype": dtype_name}


def _current(dest: Path, head: dict[str, Any]) -> bool:
    try:
        manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if {k: manifest.get(k) for k in head} != head:
        return False
    files = manifest.get("files") or {}
    return bool(files) and all((dest / n).is_file() and (dest / n).stat().st_size == s for n, s in
                               ((n, f["bytes"]) for n, f in files.items()))


def imported_dir(artifacts: Path, gguf_name: str, digest: str) -> Path:
    """Where the checkpoint imported from the GGUF file `gguf_name` (sha256 `digest`) lives."""
    return artifacts / "gguf" / f"{Path(gguf_name).stem}-{digest[:12]}"


def import_gguf(gguf_path: Path, artifacts: Path, dtype_name: str = STORED_DTYPE,
                digest: str | None = None, say=print) -> ImportedCheckpoint:
    """Convert `gguf_path` into artifacts/gguf/<stem>-<sha12>/ unless already there.
    `digest`: the file's sha256 when the caller has checked it already."""
    from gguf import GGUFReader

    started = time.monotonic()
    digest = digest or sha256_file(gguf_path)
    dest = imported_dir(artifacts, gguf_path.name, digest)
    head = _manifest_head(gguf_path, digest, dtype_name)
    if _current(dest, head):
        return ImportedCheckpoint(dest, created=False, seconds=time.monotonic() - started)
    say(f"importing {gguf_path.name} ({gguf_path.stat().st_size / 1e6:.0f} MB) into {dest} ...")
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        reader = GGUFReader(str(gguf_path))
        meta = GGUFMeta.read(reader)
        for name, content in (("config.json", hf_config(meta, dtype_name)),
                              ("generation_config.json", hf_generation_config(meta))):
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        _write_weights(reader, meta, tmp, dtype_name)
        del reader
        _write_tokenizer(gguf_path, tmp, meta)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {**head, "architecture": meta.arch, "name": meta.name, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ImportedCheckpoint(dest, created=True, seconds=time.monotonic() - started)
