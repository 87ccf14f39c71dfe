"""Tokenizers for the CPU pre/postprocessing models: the original Qwen one and HF tokenizer.json ones.

Everything here is plain Python (tiktoken / tokenizers, no torch). A tokenizer is immutable once
built, so one instance can serve every request of a Triton model instance.

Two implementations share the `Tokenizer` base:

* `QwenTiktokenTokenizer`: the original Qwen (Qwen-7B/14B/72B-Chat) tokenizer, rebuilt offline with
  tiktoken from a `qwen.tiktoken` file exactly as the checkpoint's `tokenization_qwen.py` builds it
  (same split pattern, NFC normalisation, special tokens from id 151643 on).
* `HFTokenizer` (`hf_tokenizer.py`): any checkpoint with a `tokenizer.json` (Qwen1.5/2/2.5, LLaMA),
  through `tokenizers`.

Text is always rebuilt from the raw bytes of each token (`token_bytes`), so that `decode` and the
streaming `IncrementalDetokenizer` agree byte for byte.
"""
from __future__ import annotations

import base64
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from ..errors import CheckpointError
from .defaults import CheckpointJson, GenerationDefaults, TokenDefaults

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
QWEN_EXTRA_TOKENS = tuple(f"<|extra_{i}|>" for i in range(205))
QWEN_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END) + QWEN_EXTRA_TOKENS

# The original Qwen pre-tokenisation pattern (tokenization_qwen.py, PAT_STR).
QWEN_PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

QWEN_TIKTOKEN_FILE = "qwen.tiktoken"

# Control tokens that end a chat reply whenever the vocabulary has them.
CHAT_END_TOKENS = (IM_END, ENDOFTEXT, "<|eot_id|>")


@dataclass(frozen=True)
class SpecialTokens:
    """The control tokens of a vocabulary.

    `by_text` maps each special token's surface form to its id; these are the tokens that user text
    can never produce and that `decode(..., skip_special=True)` leaves out. `eos_ids` are the ids
    that end generation (for Qwen chat both `<|im_end|>` and `<|endoftext|>`), most important first;
    `add_bos` says whether a raw text prompt gets `bos_id` in front. The ids are decided by
    `defaults.py` from the checkpoint's files (`SpecialTokens.of`).
    """

    by_text: Mapping[str, int]
    eos_ids: tuple[int, ...]
    bos_id: int | None = None
    add_bos: bool = False
    pad_id: int | None = None
    by_id: Mapping[int, str] = field(init=False)
    ids: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise once
        set_(self, "by_text", MappingProxyType(dict(self.by_text)))
        set_(self, "by_id", MappingProxyType({i: text for text, i in self.by_text.items()}))
        set_(self, "ids", frozenset(self.by_id))
        set_(self, "eos_ids", tuple(dict.fromkeys(int(i) for i in self.eos_ids)))

    @classmethod
    def of(cls, by_text: Mapping[str, int], defaults: TokenDefaults) -> SpecialTokens:
        return cls(by_text, eos_ids=defaults.eos_ids, bos_id=defaults.bos_id, add_bos=defaults.add_bos,
                   pad_id=defaults.pad_id)


class Tokenizer(ABC):
    """What the chat layer needs from a tokenizer.

    Subclasses provide `encode`, `vocab_size` and `_raw_token_bytes`; decoding is shared and works
    on raw token bytes, so that it matches the incremental detokenizer exactly.
    `strips_leading_space` (SentencePiece-style vocabularies) removes one leading space from
    decoded text, as their HF decoders do.
    """

    def __init__(self, specials: SpecialTokens, chat_template: str | None = None,
                 template_vars: Mapping[str, str] | None = None, strips_leading_space: bool = False,
                 generation: GenerationDefaults | None = None):
        self._specials = specials
        self._generation = generation or GenerationDefaults()
        self._chat_template = chat_template
        self._template_vars = MappingProxyType(dict(template_vars or {}))
        self._strips_leading_space = strips_leading_space

    @abstractmethod
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`.

        With `allow_special=False` (the default, for anything a user typed) the surface form of a
        special token, e.g. a literal "<|im_end|>", is encoded as ordinary text and never becomes
        the control token: this is the prompt-injection guard. No BOS is ever added here.
        """

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows (regular plus special); model vocabularies may be larger."""

    @abstractmethod
    def _raw_token_bytes(self, token_id: int) -> bytes | None:
        """Bytes of a regular token, or None when the id is special or unknown."""

    # -- special tokens ------------------------------------------------------------------------
    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Surface form -> id of every special (control) token."""
        return self._specials.by_text

    @property
    def special_ids(self) -> frozenset[int]:
        return self._specials.ids

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Ids that end generation, most important first."""
        return self._specials.eos_ids

    @property
    def bos_id(self) -> int | None:
        return self._specials.bos_id

    @property
    def add_bos(self) -> bool:
        """Whether a raw text prompt starts with `bos_id` (never for Qwen; LLaMA 2 yes)."""
        return self._specials.add_bos

    @property
    def pad_id(self) -> int | None:
        return self._specials.pad_id

    @property
    def generation_defaults(self) -> GenerationDefaults:
        """The checkpoint's default sampling (generation_config.json), for requests that set none."""
        return self._generation

    @property
    def im_start_id(self) -> int | None:
        return self._specials.by_text.get(IM_START)

    @property
    def im_end_id(self) -> int | None:
        return self._specials.by_text.get(IM_END)

    @property
    def strips_leading_space(self) -> bool:
        return self._strips_leading_space

    @property
    def chat_template(self) -> str | None:
        """The checkpoint's jinja chat template, if it ships one."""
        return self._chat_template

    @property
    def template_vars(self) -> Mapping[str, str]:
        """Extra variables for the chat template (bos_token, eos_token, ...)."""
        return self._template_vars

    # -- decoding ------------------------------------------------------------------------------
    def token_bytes(self, token_id: int, skip_special: bool = True) -> bytes:
        """Raw UTF-8 bytes of one token (possibly part of a character).

        Special tokens give b"" when `skip_special`, else their surface form. Ids the tokenizer does
        not know (e.g. the padding rows of a model's embedding) always give b"".
        """
        raw = self._raw_token_bytes(token_id)
        if raw is not None:
            return raw
        text = self._specials.by_id.get(token_id)
        if text is None or skip_special:
            return b""
        return text.encode("utf-8")

    def token_bytes_table(self, skip_special: bool = True) -> tuple[bytes, ...]:
        """`token_bytes` of every id, in id order: what an engine model needs to release tokens in
        groups that end on a whole character (see `complete_prefix_len`)."""
        return tuple(self.token_bytes(i, skip_special) for i in range(self.vocab_size))

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD."""
        data = b"".join(self.token_bytes(int(i), skip_special) for i in ids)
        text = data.decode("utf-8", errors="replace")
        if self.strips_leading_space and text.startswith(" "):
            text = text[1:]
        return text


# ----------------------------------------------------------------------------------------------
# The original Qwen tokenizer (qwen.tiktoken)
# ----------------------------------------------------------------------------------------------
def parse_tiktoken_ranks(data: bytes) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one "base64(token) rank" pair per line."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"qwen.tiktoken line {lineno}: expected 'token rank', got {line[:60]!r}")
        ranks[base64.b64decode(parts[0])] = int(parts[1])
    return ranks


def default_qwen_vocab() -> bytes:
    """The real Qwen vocabulary that the `dashscope` package ships (read offline)."""
    try:
        return (resources.files("dashscope") / "resources" / QWEN_TIKTOKEN_FILE).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise CheckpointError(
            "no qwen.tiktoken given and the dashscope package (which ships one) is not installed") from exc


def _ranks_by_id(ranks: Mapping[bytes, int]) -> tuple[bytes, ...]:
    by_id = sorted((rank, token) for token, rank in ranks.items())
    if [rank for rank, _ in by_id] != list(range(len(by_id))):
        raise CheckpointError("qwen.tiktoken ranks must be 0..n-1 without gaps or repeats")
    return tuple(token for _, token in by_id)


class QwenTiktokenTokenizer(Tokenizer):
    """The original Qwen tokenizer, built offline with tiktoken exactly like `tokenization_qwen.py`.

    `path` is a `qwen.tiktoken` file; None uses the copy that the dashscope package ships.
    Text is NFC-normalised before encoding, as the original does. `files`: the checkpoint's
    tokenizer_config.json / generation_config.json, if any.
    """

    def __init__(self, path: str | Path | None = None, files: CheckpointJson | None = None):
        import tiktoken

        data = Path(path).read_bytes() if path is not None else default_qwen_vocab()
        ranks = parse_tiktoken_ranks(data)
        self._bytes_by_id = _ranks_by_id(ranks)
        specials = {text: i for i, text in enumerate(QWEN_SPECIAL_TOKENS, start=len(ranks))}
        self._enc = tiktoken.Encoding("Qwen", pat_str=QWEN_PAT_STR, mergeable_ranks=ranks,
                                      special_tokens=specials)
        if self._enc.n_vocab != len(ranks) + len(specials):
            raise CheckpointError(f"qwen.tiktoken: {self._enc.n_vocab} ids != "
                                  f"{len(ranks)} ranks + {len(specials)} special tokens")
        files = files or CheckpointJson()
        defaults = files.tokens(specials.get, chat_end_ids=(specials[IM_END], specials[ENDOFTEXT]))
        super().__init__(SpecialTokens.of(specials, defaults),
                         template_vars={"eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT},
                         generation=files.generation)

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        if allow_special:
            return self._enc.encode(text, allowed_special="all")
        return self._enc.encode_ordinary(text)

    def _raw_token_bytes(self, token_id: int) -> bytes | None:
        if 0 <= token_id < len(self._bytes_by_id):
            return self._bytes_by_id[token_id]
        return None


def load_tokenizer(checkpoint_dir: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint folder: `qwen.tiktoken` when present, else `tokenizer.json`."""
    from .hf_tokenizer import TOKENIZER_JSON, HFTokenizer

    root = Path(checkpoint_dir)
    if (root / QWEN_TIKTOKEN_FILE).is_file():
        return QwenTiktokenTokenizer(root / QWEN_TIKTOKEN_FILE, files=CheckpointJson.read(root))
    if (root / TOKENIZER_JSON).is_file():
        return HFTokenizer.from_dir(root)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist")
    raise CheckpointError(
        f"{root} holds no tokenizer: expected {QWEN_TIKTOKEN_FILE} (original Qwen) or {TOKENIZER_JSON} "
        "(HF fast tokenizer); convert a SentencePiece tokenizer.model to tokenizer.json first")


def special_surface_forms(tokenizer: Tokenizer) -> Sequence[str]:
    """Special token texts, longest first (so that regex alternation prefers the longest match)."""
    return sorted(tokenizer.special_tokens, key=len, reverse=True)
