"""The embedded default model: a tiny random-weight Qwen2 with the real Qwen vocabulary.

Written with transformers' own `save_pretrained` (config.json, model.safetensors), so it is a
checkpoint like any other: hidden 128, 2 layers, 4 heads, 2 KV heads, MLP 256, Qwen's padded
vocabulary of 151936 rows, 4096 positions, fixed seed. Next to it: `qwen.tiktoken` copied from the
dashscope package (so `qwen_triton.chat.load_tokenizer(folder)` gives the Qwen tiktoken tokenizer)
and a generation_config.json whose end ids are <|im_end|> 151645 and <|endoftext|> 151643.

Idempotent: a marker file records the spec and every file's SHA-256; a folder whose marker matches
is left alone. The weights are random, so the text is nonsense; everything else (shapes, vocabulary,
special tokens, chat template) is Qwen's, which is what serving tests and load tests need.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gguf_import import sha256_file

DIRNAME = "default-qwen2-tiny"
MARKER = "qwen_triton_default.json"
VERSION = 1
SEED = 1234
IM_END_ID = 151645
ENDOFTEXT_ID = 151643
TIKTOKEN_FILE = "qwen.tiktoken"

# The Qwen2Config of the default model (transformers 5 key names).
SPEC: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    # well separated logits: greedy tokens stay the same under float rounding (fp32 vs bf16)
    "initializer_range": 0.1,
    "bos_token_id": ENDOFTEXT_ID,
    "eos_token_id": IM_END_ID,
    "pad_token_id": ENDOFTEXT_ID,
}
GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": ENDOFTEXT_ID,
    "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
    "pad_token_id": ENDOFTEXT_ID,
    "do_sample": False,
    "max_new_tokens": 512,
}


@dataclass(frozen=True)
class DefaultCheckpoint:
    path: Path
    created: bool  # False: an existing folder matched its marker


def _wanted_marker_head() -> dict[str, Any]:
    return {"version": VERSION, "seed": SEED, "spec": SPEC, "generation_config": GENERATION_CONFIG}


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(path: str | Path) -> bool:
    """True when `path` holds the default checkpoint of this VERSION/spec, every file intact."""
    root = Path(path)
    marker = read_marker(root)
    if marker is None or {k: marker.get(k) for k in _wanted_marker_head()} != _wanted_marker_head():
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return False
    return all((root / name).is_file() and sha256_file(root / name) == digest for name, digest in files.items())


def qwen_vocab_source() -> Path:
    """dashscope's copy of the real Qwen vocabulary, or the file $QWEN_TIKTOKEN names (machines
    without dashscope, e.g. a GPU image the vocabulary is carried to)."""
    override = os.environ.get("QWEN_TIKTOKEN")
    if override:
        return Path(override)
    try:
        import dashscope
    except ModuleNotFoundError:
        raise RuntimeError("the default checkpoint needs the real Qwen vocabulary, which ships in the "
                           "dashscope package: pip install dashscope (or pass --model)") from None
    path = Path(dashscope.__file__).parent / "resources" / TIKTOKEN_FILE
    if not path.is_file():
        raise RuntimeError(f"dashscope {getattr(dashscope, '__version__', '?')} has no {path}")
    return path


def _write(dest: Path) -> None:
    """Write the checkpoint into the empty folder `dest`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    config = Qwen2Config(**SPEC)
    torch.manual_seed(SEED)
    with torch.no_grad():
        model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(dest)
    (dest / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(qwen_vocab_source(), dest / TIKTOKEN_FILE)


def ensure_default_checkpoint(artifacts: str | Path, force: bool = False) -> DefaultCheckpoint:
    """The default checkpoint under `artifacts`/DIRNAME, written unless already current."""
    dest = Path(artifacts) / DIRNAME
    if not force and dest.is_dir() and is_current(dest):
        return DefaultCheckpoint(dest, created=False)
    if dest.exists() and any(dest.iterdir()) and read_marker(dest) is None:
        raise RuntimeError(f"{dest} exists and is not a default checkpoint written by the build "
                           f"(no {MARKER}); move it away or pass --model")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{DIRNAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        marker = {**_wanted_marker_head(), "files": files}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DefaultCheckpoint(dest, created=True)
