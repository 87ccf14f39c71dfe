"""HF `tokenizer.json` tokenizers (Qwen1.5/2/2.5, LLaMA, SmolLM, GGUF imports) through `tokenizers`.

Token strings map to raw bytes according to the file's decoder (byte-level BPE or SentencePiece-style
"▁" with byte fallback), so decoding and streaming work on bytes exactly as for the original Qwen
tokenizer (`tokenizer.py`). Special-token ids and defaults come from `defaults.py`.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .defaults import CheckpointJson, post_processor_adds_bos, token_text
from .tokenizer import CHAT_END_TOKENS, SpecialTokens, Tokenizer

TOKENIZER_JSON = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def byte_level_alphabet() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level mapping: printable character -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


@dataclass(frozen=True)
class DecoderKind:
    """How token strings of a tokenizer.json map to bytes (read from its "decoder" section)."""

    byte_level: bool = False      # GPT-2 style byte alphabet (Qwen2, LLaMA 3)
    metaspace: bool = False       # "▁" stands for a space (SentencePiece, LLaMA 1/2)
    byte_fallback: bool = False   # "<0xAB>" tokens are single bytes
    strips_leading_space: bool = False

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> DecoderKind:
        parts = _decoder_parts(spec)
        types = {p.get("type") for p in parts}
        metaspace = "Metaspace" in types or any(
            p.get("type") == "Replace" and _replace_pattern(p) == "▁" for p in parts)
        strips = any(p.get("type") == "Strip" and p.get("content") == " " and p.get("start", 0) >= 1
                     for p in parts) or any(_metaspace_strips(p) for p in parts)
        return cls(byte_level="ByteLevel" in types, metaspace=metaspace,
                   byte_fallback="ByteFallback" in types, strips_leading_space=strips)


def _decoder_parts(spec: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [p for sub in spec.get("decoders", []) for p in _decoder_parts(sub)]
    return [spec]


def _replace_pattern(part: Mapping[str, Any]) -> str | None:
    pattern = part.get("pattern", {})
    return pattern.get("String") if isinstance(pattern, Mapping) else None


def _metaspace_strips(part: Mapping[str, Any]) -> bool:
    if part.get("type") != "Metaspace":
        return False
    return part.get("prepend_scheme", "always") != "never" and part.get("add_prefix_space", True)


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _token_string_bytes(token: str, kind: DecoderKind, alphabet: Mapping[str, int]) -> bytes:
    if kind.byte_level:
        return b"".join(bytes([alphabet[c]]) if c in alphabet else c.encode("utf-8") for c in token)
    if kind.byte_fallback and (m := _BYTE_TOKEN.fullmatch(token)):
        return bytes([int(m.group(1), 16)])
    if kind.metaspace:
        token = token.replace("▁", " ")
    return token.encode("utf-8")


def _pick_chat_template(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        return named.get("default") or next(iter(named.values()), None)
    return None


@dataclass(frozen=True)
class HFTokenizerFiles:
    """The contents of a checkpoint's tokenizer files, already read."""

    tokenizer_json: str
    meta: CheckpointJson = field(default_factory=CheckpointJson)  # tokenizer / generation config
    chat_template: str | None = None          # chat_template.jinja, which wins over the config's

    @property
    def config(self) -> Mapping[str, Any]:
        """tokenizer_config.json."""
        return self.meta.tokenizer_config

    @classmethod
    def read(cls, checkpoint_dir: str | Path) -> HFTokenizerFiles:
        root = Path(checkpoint_dir)
        template_file = root / CHAT_TEMPLATE_FILE
        return cls(
            tokenizer_json=(root / TOKENIZER_JSON).read_text(encoding="utf-8"),
            meta=CheckpointJson.read(root),
            chat_template=template_file.read_text(encoding="utf-8") if template_file.is_file() else None,
        )


class HFTokenizer(Tokenizer):
    """A checkpoint's `tokenizer.json` (plus tokenizer_config.json) through the `tokenizers` library.

    Special tokens are the added tokens marked `special`. Encoding with `allow_special=False` uses a
    second copy of the tokenizer with `encode_special_tokens` set, so literal special-token text in
    user input stays text. Supported decoders: byte-level BPE (Qwen1.5/2/2.5, LLaMA 3) and
    SentencePiece-style "▁"/byte-fallback vocabularies (LLaMA 1/2).
    """

    def __init__(self, files: HFTokenizerFiles):
        from tokenizers import Tokenizer as RustTokenizer

        spec = json.loads(files.tokenizer_json)
        self._tok = RustTokenizer.from_str(files.tokenizer_json)
        self._tok_plain = RustTokenizer.from_str(files.tokenizer_json)
        self._tok_plain.encode_special_tokens = True
        kind = DecoderKind.from_spec(spec.get("decoder"))
        added = {int(t["id"]): t for t in spec.get("added_tokens", [])}
        specials = {t["content"]: i for i, t in added.items() if t.get("special")}
        self._bytes_by_id = self._build_byte_table(kind, added, set(specials.values()))
        defaults = files.meta.tokens(self._tok.token_to_id,
                                     chat_end_ids=[specials[t] for t in CHAT_END_TOKENS if t in specials],
                                     encoder_adds_bos=post_processor_adds_bos(spec.get("post_processor")))
        super().__init__(SpecialTokens.of(specials, defaults),
                         chat_template=files.chat_template or _pick_chat_template(
                             files.config.get("chat_template")),
                         template_vars=self._template_vars_of(files.config),
                         strips_leading_space=kind.strips_leading_space, generation=files.meta.generation)

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path) -> HFTokenizer:
        """Load tokenizer.json, tokenizer_config.json, chat_template.jinja, generation_config.json."""
        return cls(HFTokenizerFiles.read(checkpoint_dir))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        tok = self._tok if allow_special else self._tok_plain
        return tok.encode(text, add_special_tokens=False).ids

    def _raw_token_bytes(self, token_id: int) -> bytes | None:
        if 0 <= token_id < len(self._bytes_by_id):
            return self._bytes_by_id[token_id]
        return None

    def _build_byte_table(self, kind: DecoderKind, added: Mapping[int, Mapping[str, Any]],
                          special_ids: set[int]) -> tuple[bytes | None, ...]:
        alphabet = byte_level_alphabet()
        table: list[bytes | None] = []
        for i in range(self._tok.get_vocab_size(with_added_tokens=True)):
            token = self._tok.id_to_token(i)
            if i in special_ids or token is None:
                table.append(None)
            elif i in added:
                table.append(added[i]["content"].encode("utf-8"))
            else:
                table.append(_token_string_bytes(token, kind, alphabet))
        return tuple(table)

    @staticmethod
    def _template_vars_of(config: Mapping[str, Any]) -> dict[str, str]:
        names = ("bos_token", "eos_token", "unk_token", "pad_token")
        values = {name: token_text(config.get(name)) for name in names}
        return {name: value for name, value in values.items() if value is not None}
