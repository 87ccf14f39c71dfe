"""Streaming detokenization that never splits a UTF-8 character.

Byte-level vocabularies (Qwen, LLaMA 3) cut many CJK characters and most emoji across tokens, so a
token on its own may hold half a character. Decoding each streamed chunk separately then shows
U+FFFD. Two tools here avoid that:

* `IncrementalDetokenizer`: per-request state; `push` returns only whole characters and keeps the
  trailing incomplete bytes for the next call. Its joined output equals `tokenizer.decode(all ids)`.
* `complete_prefix_len` / `utf8_incomplete_tail`: stateless, for Triton's ensemble, where
  postprocessing sees each streamed response alone. The engine model releases token ids in groups
  whose bytes end on a whole character and keeps the rest for its next response.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from .tokenizer import Tokenizer

# For a lead byte: how many bytes its character has, and the range its second byte must be in
# (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF).
_CONTINUATION = (0x80, 0xBF)


def _sequence_shape(lead: int) -> tuple[int, tuple[int, int]] | None:
    """(length, allowed second-byte range) of a multi-byte character starting with `lead`."""
    if 0xC2 <= lead <= 0xDF:
        return 2, _CONTINUATION
    if lead == 0xE0:
        return 3, (0xA0, 0xBF)
    if lead == 0xED:
        return 3, (0x80, 0x9F)
    if 0xE1 <= lead <= 0xEF:
        return 3, _CONTINUATION
    if lead == 0xF0:
        return 4, (0x90, 0xBF)
    if 0xF1 <= lead <= 0xF3:
        return 4, _CONTINUATION
    if lead == 0xF4:
        return 4, (0x80, 0x8F)
    return None


def _is_valid_start(seq: bytes) -> bool:
    """Whether `seq` (lead byte first) is a proper prefix of some valid UTF-8 character."""
    shape = _sequence_shape(seq[0])
    if shape is None or len(seq) >= shape[0]:
        return False
    _, (low, high) = shape
    if len(seq) >= 2 and not low <= seq[1] <= high:
        return False
    return all(0x80 <= b <= 0xBF for b in seq[2:])


def utf8_incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of `data` begin a UTF-8 character that is not complete yet.

    0 when `data` ends on a character boundary, or when its last bytes can never become valid
    (those are decoded, as U+FFFD, right away). At most 3.
    """
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if 0x80 <= byte <= 0xBF:  # continuation byte: the lead is further back
            continue
        return back if _is_valid_start(data[-back:]) else 0
    return 0


def complete_prefix_len(token_bytes_list: Sequence[bytes]) -> int:
    """How many leading tokens can be released so that their joined bytes end on a whole character.

    `token_bytes_list` holds the bytes of consecutive tokens (b"" for skipped special tokens). The
    answer k is the largest one for which `b"".join(token_bytes_list[:k])` has no incomplete tail;
    the remaining tokens wait for the ones that complete their character.
    """
    ends = [0]
    for chunk in token_bytes_list:
        ends.append(ends[-1] + len(chunk))
    joined = b"".join(token_bytes_list)
    for k in range(len(token_bytes_list), 0, -1):
        end = ends[k]
        if utf8_incomplete_tail(joined[max(0, end - 3):end]) == 0:
            return k
    return 0


class IncrementalDetokenizer:
    """Turns one request's stream of token ids into text, one whole character at a time.

    `push` returns the newly completed text (possibly ""); `flush` returns what is left at the end
    of the request, where leftover incomplete bytes become U+FFFD. Special tokens are skipped unless
    `skip_special=False`. The concatenation of all outputs equals `tokenizer.decode(ids)`.
    Not thread-safe: use one instance per request.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._pending = bytearray()
        self._at_start = True

    def push(self, token_ids: Iterable[int]) -> str:
        """Add tokens; return the text they complete."""
        for token_id in token_ids:
            self._pending += self._tokenizer.token_bytes(int(token_id), self._skip_special)
        ready = len(self._pending) - utf8_incomplete_tail(self._pending)
        return self._take(ready)

    def flush(self) -> str:
        """Return the remaining text; incomplete bytes become U+FFFD."""
        return self._take(len(self._pending))

    @property
    def pending_bytes(self) -> bytes:
        """Bytes held back because they end in the middle of a character."""
        return bytes(self._pending)

    def _take(self, n: int) -> str:
        text = self._pending[:n].decode("utf-8", errors="replace")
        del self._pending[:n]
        return self._strip_start(text)

    def _strip_start(self, text: str) -> str:
        if not text or not self._at_start:
            return text
        self._at_start = False
        if self._tokenizer.strips_leading_space and text.startswith(" "):
            return text[1:]
        return text
