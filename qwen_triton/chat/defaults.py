"""A checkpoint's special-token facts and generation defaults: the one place that decides them.

Preprocessing (whether a BOS is added, the end and pad ids), the engine model (end ids, default
sampling) and postprocessing all read these from the checkpoint's `Tokenizer`, which is built with
what this module returns. Sources, read once by `CheckpointJson.read`:

- tokenizer_config.json: `bos_token` / `eos_token` / `pad_token` (text), `add_bos_token`;
- generation_config.json: `bos_token_id` / `eos_token_id` / `pad_token_id`, `do_sample`,
  `temperature`, `top_k`, `top_p`, `repetition_penalty`;
- tokenizer.json's post-processor, when tokenizer_config.json does not say `add_bos_token`
  (that is where a fast tokenizer's "add BOS" lives);
- the vocabulary's chat end tokens (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`), which always end a
  chat reply. A GGUF import writes the first two files from the GGUF metadata (build/gguf_import.py).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling used when a request sets none: the checkpoint's own generation_config.json when it
    asks for sampling, else greedy (its repetition penalty applies either way)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    @classmethod
    def from_generation_config(cls, cfg: Mapping[str, Any]) -> GenerationDefaults:
        repetition_penalty = float(cfg.get("repetition_penalty") or 1.0)
        if not cfg.get("do_sample", False):
            return cls(repetition_penalty=repetition_penalty)
        return cls(temperature=float(cfg.get("temperature") or 1.0), top_k=int(cfg.get("top_k") or 0),
                   top_p=float(cfg.get("top_p") or 1.0), repetition_penalty=repetition_penalty)


@dataclass(frozen=True)
class TokenDefaults:
    """The ids a checkpoint's requests use unless they say otherwise."""

    eos_ids: tuple[int, ...]          # end generation, most important first
    bos_id: int | None = None
    add_bos: bool = False             # prepend bos_id to a raw text prompt
    pad_id: int | None = None


@dataclass(frozen=True)
class CheckpointJson:
    """tokenizer_config.json and generation_config.json of a checkpoint folder (empty when absent)."""

    tokenizer_config: Mapping[str, Any] = field(default_factory=dict)
    generation_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, root: str | Path) -> CheckpointJson:
        root = Path(root)
        return cls(read_json(root / TOKENIZER_CONFIG) or {}, read_json(root / GENERATION_CONFIG) or {})

    @property
    def generation(self) -> GenerationDefaults:
        return GenerationDefaults.from_generation_config(self.generation_config)

    def tokens(self, token_id: Callable[[str], int | None], chat_end_ids: Sequence[int],
               encoder_adds_bos: bool | None = None) -> TokenDefaults:
        """Resolve the token defaults. `token_id(text)` looks a token up in the vocabulary;
        `encoder_adds_bos`: what the tokenizer file's own post-processor does, if it says."""
        tc, gc = self.tokenizer_config, self.generation_config

        def by_text(key: str) -> int | None:
            text = token_text(tc.get(key))
            return None if text is None else token_id(text)

        # chat end tokens before generation_config's ids: the original Qwen's says <|endoftext|>, yet a
        # chat reply ends on <|im_end|> first
        eos = [by_text("eos_token"), *chat_end_ids, *as_id_list(gc.get("eos_token_id"))]
        bos = by_text("bos_token")
        bos = bos if bos is not None else _optional_int(gc.get("bos_token_id"))
        pad = _optional_int(gc.get("pad_token_id"))
        pad = pad if pad is not None else by_text("pad_token")
        add_bos = tc.get("add_bos_token")
        if not isinstance(add_bos, bool):
            add_bos = bool(encoder_adds_bos)
        return TokenDefaults(eos_ids=tuple(dict.fromkeys(i for i in eos if i is not None)), bos_id=bos,
                             add_bos=add_bos and bos is not None, pad_id=pad)


def post_processor_adds_bos(spec: Mapping[str, Any] | None) -> bool | None:
    """Whether a tokenizer.json post-processor puts a special token before a single sequence
    (None: there is no TemplateProcessing to tell)."""
    if not spec:
        return None
    if spec.get("type") == "Sequence":
        answers = [post_processor_adds_bos(p) for p in spec.get("processors", [])]
        return next((a for a in answers if a is not None), None)
    if spec.get("type") != "TemplateProcessing":
        return None
    single = spec.get("single") or []
    return bool(single) and "SpecialToken" in single[0]


def token_text(value: Any) -> str | None:
    """A special token entry of tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def read_json(path: Path) -> dict[str, Any] | None:
    """A checkpoint's JSON file, None when absent; CheckpointError when malformed."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
