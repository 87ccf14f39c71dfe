"""Grammar-constrained (guided) decoding: the grammars, each constrained sequence's matcher, the token masks.

xgrammar does the work. `GuidedDecoding` (one per engine) indexes the vocabulary once, on the first
guided request: each token id's raw bytes (the chat tokenizer's `token_bytes_table`, the same bytes
the detokenizer streams, so a tiktoken `qwen.tiktoken` and a byte-level `tokenizer.json` look alike
to xgrammar), the logits width (the model's vocab_size, which may exceed the tokenizer's: ids past
the tokenizer and special tokens are never allowed) and the end ids. It compiles each guide through
xgrammar's GrammarCompiler, whose cache is keyed by the guide's type and text (bounded by
CACHE_LIMIT_BYTES), so repeated schemas compile once. A guide that does not compile is an
InvalidRequestError naming the input that carried it.

Per step: `fill_token_mask` writes one bitmask row per constrained sampling row (int32 [N, V/32],
bit set = token allowed) and lists those rows; the sampler applies it with `apply_token_mask_`,
which touches only the listed rows, so unconstrained rows in the batch cost nothing. After the step,
`GrammarState.accept` advances the sequence's matcher by its sampled token (Sequence.append_token),
once per token: a preempted sequence keeps its matcher, as it keeps its tokens.
"""
from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import InvalidRequestError, QwenTritonError
from .sampling_params import GUIDE_FIELD, GUIDE_TYPE_FIELD, GuidedDecodingParams

if TYPE_CHECKING:
    from .chat import Tokenizer

# Compiled grammars kept by the compiler (token masks precomputed per grammar state; a JSON schema
# takes tens of kB to a few MB). Guides come from clients: the cache must stay bounded.
CACHE_LIMIT_BYTES = 256 << 20
_MAX_COMPILE_THREADS = 8
# Longest run of whitespace a JSON guide allows between two tokens of the JSON: enough to pretty-print
# 5 levels deep at 4 spaces, and a model (or random weights) that keeps choosing whitespace, which an
# unbounded JSON grammar always allows, cannot loop there until max_tokens.
MAX_JSON_WHITESPACE = 24
# "json": any JSON object or array (TensorRT-LLM's builtin JSON grammar), with the whitespace bound
_ANY_JSON = '{"type": ["object", "array"]}'
# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: " and may say "Check failed: ... is false:"
_ERROR_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*(Check failed:.*?is false:\s*)?")


class GrammarState:
    """One constrained sequence's position in its grammar (an xgrammar GrammarMatcher)."""

    def __init__(self, matcher: Any):
        self._matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar does not allow it (nothing changes)."""
        return bool(self._matcher.accept_token(token_id))

    @property
    def is_terminated(self) -> bool:
        """The grammar accepted its end (a stop token after a complete output): no token may follow."""
        return bool(self._matcher.is_terminated())

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into row `row` of an int32 [N, ceil(V/32)] CPU bitmask."""
        self._matcher.fill_next_token_bitmask(bitmask, row)


class GuidedDecoding:
    """The engine's grammar compiler over one vocabulary, built on first use (thread-safe: guides
    are compiled where requests are validated, in the caller's thread, and again, from the cache,
    on the step thread).

    `load_tokenizer` returns the checkpoint's chat tokenizer (called once, on the first guided
    request); `vocab_size` is the width of the model's logits.
    """

    def __init__(self, load_tokenizer: Callable[[], Tokenizer], vocab_size: int):
        self._load_tokenizer = load_tokenizer
        self.vocab_size = vocab_size
        self._lock = threading.Lock()
        self._compiler: Any = None

    def _get_compiler(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr  # a few seconds to import: only engines that see a guide pay it

                try:
                    tokenizer = self._load_tokenizer()
                except QwenTritonError as exc:  # e.g. a checkpoint folder without tokenizer files
                    raise InvalidRequestError(GUIDE_TYPE_FIELD, f"guided decoding needs the model's "
                                                                f"vocabulary: {exc}") from None
                # raw bytes per id (b"" for special ids, which xgrammar then never allows)
                info = xgr.TokenizerInfo(list(tokenizer.token_bytes_table(skip_special=True)), xgr.VocabType.RAW,
                                         vocab_size=self.vocab_size, stop_token_ids=list(tokenizer.eos_ids))
                self._compiler = xgr.GrammarCompiler(
                    info, max_threads=min(_MAX_COMPILE_THREADS, os.cpu_count() or 1),
                    cache_enabled=True, cache_limit_bytes=CACHE_LIMIT_BYTES)
            return self._compiler

    def compile(self, params: GuidedDecodingParams) -> Any:
        """The compiled grammar of a guide (from the cache when it was seen before).
        InvalidRequestError naming guided_decoding_guide when the guide is not valid."""
        compiler = self._get_compiler()
        try:
            return _compile(compiler, params)
        except InvalidRequestError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError / ValueError subclasses with the parser's words
            raise InvalidRequestError(GUIDE_FIELD, f"not a valid {_WHAT[params.guide_type]}: "
                                                   f"{_clean(exc)}") from None

    def start(self, params: GuidedDecodingParams, end_ids: Sequence[int]) -> GrammarState:
        """A fresh matcher for one sequence. Where the grammar may end, its end ids are the only
        tokens allowed to end it (none given: the vocabulary's end ids)."""
        import xgrammar as xgr

        grammar = self.compile(params)
        return GrammarState(xgr.GrammarMatcher(grammar, override_stop_tokens=list(end_ids) or None))


_WHAT = {"json": "JSON", "json_schema": "JSON schema", "regex": "regular expression",
         "ebnf_grammar": "EBNF grammar", "structural_tag": "structural tag"}


def _compile(compiler: Any, params: GuidedDecodingParams) -> Any:
    kind, guide = params.guide_type, params.guide
    if kind in ("json", "json_schema"):
        return compiler.compile_json_schema(guide if kind == "json_schema" else _ANY_JSON,
                                            max_whitespace_cnt=MAX_JSON_WHITESPACE)
    if kind == "regex":
        return compiler.compile_regex(guide)
    if kind == "ebnf_grammar":
        return compiler.compile_grammar(guide)
    return _compile_structural_tag(compiler, guide)


def _compile_structural_tag(compiler: Any, guide: str) -> Any:
    """xgrammar's structural tag JSON, or TensorRT-LLM's {"structures": [{"begin", "schema", "end"}],
    "triggers": [...]} form."""
    import xgrammar as xgr

    try:
        spec = json.loads(guide)
    except ValueError as exc:
        raise InvalidRequestError(GUIDE_FIELD, f"a structural tag must be JSON: {exc}") from None
    if isinstance(spec, dict) and "structures" in spec and "triggers" in spec:
        try:
            tags = [xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(s["schema"]), end=s["end"])
                    for s in spec["structures"]]
        except (KeyError, TypeError):
            raise InvalidRequestError(GUIDE_FIELD, 'every one of a structural tag\'s "structures" needs "begin", '
                                                   '"schema" and "end"') from None
        return compiler.compile_structural_tag(tags, list(spec["triggers"]))
    return compiler.compile_structural_tag(guide)


def _clean(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _ERROR_PREFIX.sub("", text)[:500]


# -- per step ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenMask:
    """The grammar masks of one step. bitmask: int32 [N, ceil(V/32)] on the CPU, one row per
    sampling row, bit t of a row set when token t is allowed; only the rows listed in `rows` are
    filled (the constrained ones), the others hold garbage and are never read."""

    bitmask: torch.Tensor
    rows: list[int]


def fill_token_mask(states: Sequence[GrammarState | None], vocab_size: int) -> TokenMask | None:
    """The masks of a step's sampling rows (states[i]: row i's grammar, None if unconstrained);
    None when no row is constrained."""
    rows = [i for i, state in enumerate(states) if state is not None]
    if not rows:
        return None
    bitmask = torch.empty((len(states), -(-vocab_size // 32)), dtype=torch.int32)  # [N, W]
    for i in rows:
        states[i].fill(bitmask, i)
    return TokenMask(bitmask, rows)


def apply_token_mask_(logits: torch.Tensor, mask: TokenMask) -> None:
    """logits[r, t] = -inf for every listed row r and every token t its grammar forbids, in place.
    logits: float32 [N, V] on any device; the other rows are not touched."""
    import xgrammar as xgr

    bitmask = mask.bitmask.to(logits.device, non_blocking=True)
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[-1], indices=mask.rows)
