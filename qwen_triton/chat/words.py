"""Stop / bad word lists in the Triton contract's [2, N] layout.

Row 0 holds the concatenated token ids of all words, row 1 the cumulative end offset of each word,
padded with -1 to the width of row 0. No words gives [[0], [-1]], as tensorrtllm_backend does.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidRequestError
from .tokenizer import Tokenizer

WordList = list[list[int]]  # [[ids...], [offsets...]], both rows of the same length


def to_word_list(tokenizer: Tokenizer, words: Sequence[str], allow_special: bool = True) -> WordList:
    """Encode `words` into the [2, N] layout; words that encode to no ids are left out.

    Special-token text (e.g. "<|im_end|>") maps to its control token by default, as a stop word
    given that way means the control token; the words are settings, not prompt text.
    """
    encoded = [tokenizer.encode(word, allow_special=allow_special) for word in words]
    return ids_to_word_list([ids for ids in encoded if ids])


def ids_to_word_list(words: Sequence[Sequence[int]]) -> WordList:
    """The [2, N] layout of words already given as token ids (empty words are left out)."""
    flat: list[int] = []
    offsets: list[int] = []
    for word in words:
        flat.extend(int(t) for t in word)
        if word:
            offsets.append(len(flat))
    if not flat:
        return [[0], [-1]]
    return [flat, offsets + [-1] * (len(flat) - len(offsets))]


def from_word_list(array: Any, field: str = "word_list") -> list[list[int]]:
    """Inverse of `to_word_list`: the token ids of each word.

    Accepts a [2, N] nested list or array (numpy arrays too), or [1, 2, N] for a batch of one.
    Raises InvalidRequestError (naming `field`) for a malformed layout or values that are not integers.
    """
    rows = array.tolist() if hasattr(array, "tolist") else array
    if _is_row(rows) and len(rows) == 1 and _is_row(rows[0]) and len(rows[0]) == 2 and _is_row(rows[0][0]):
        rows = rows[0]  # [1, 2, N]
    if not (_is_row(rows) and len(rows) == 2 and all(_is_row(r) for r in rows) and len(rows[0]) == len(rows[1])):
        raise InvalidRequestError(field, "a word list must have shape [2, N]")
    ids, offsets = _integers(rows[0], field), _integers(rows[1], field)
    return _split_words(ids, offsets, field)


def _is_row(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _integers(values: Sequence[Any], field: str) -> list[int]:
    out = []
    for value in values:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise InvalidRequestError(field, f"a word list holds integers, got {value!r:.40}")
        out.append(int(value))
    return out


def _split_words(ids: list[int], offsets: list[int], field: str) -> list[list[int]]:
    words: list[list[int]] = []
    start = 0
    for end in offsets:
        if end < 0:
            break
        if end <= start or end > len(ids):
            raise InvalidRequestError(field, f"offsets must increase within [1, {len(ids)}], got {offsets}")
        words.append(ids[start:end])
        start = end
    return words
