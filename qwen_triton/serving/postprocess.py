"""Postprocessing: token ids -> text, special tokens skipped.

Each call decodes one response on its own (the model keeps no per-request state), so streamed
responses rely on the engine model releasing tokens in groups that end on whole UTF-8 characters
(engine_response.Utf8TokenReleaser).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..chat import Tokenizer, load_tokenizer
from . import contract as c


class Postprocessor:
    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special

    @classmethod
    def from_dir(cls, tokenizer_dir: str, **kw) -> Postprocessor:
        return cls(load_tokenizer(tokenizer_dir), **kw)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of one sequence's tokens (bytes joined, then decoded once)."""
        data = b"".join(self.tokenizer.token_bytes(int(t), self.skip_special) for t in token_ids)
        return data.decode("utf-8", errors="replace")

    def decode_batch(self, tokens, lengths) -> list[list[bytes]]:
        """TOKENS_BATCH [B, beams, T] and SEQUENCE_LENGTH [B, beams] -> UTF-8 texts [B][beams]."""
        return [[self.decode(list(beam[:n])).encode("utf-8") for beam, n in zip(row, row_lens)]
                for row, row_lens in zip(tokens, lengths)]


def postprocess_arrays(post: Postprocessor, inputs) -> dict[str, np.ndarray]:
    """TOKENS_BATCH [B, beams, T] + SEQUENCE_LENGTH [B, beams] -> OUTPUT [B * beams] (BYTES), flat as
    tensorrtllm_backend's postprocessing returns it (clients read `text_output[0]`)."""
    tokens = np.asarray(inputs[c.POST_TOKENS_BATCH])
    lengths = np.asarray(inputs[c.POST_SEQUENCE_LENGTH])
    if tokens.ndim == 2:  # a model without the beam axis
        tokens = tokens[:, None, :]
    lengths = lengths.reshape(tokens.shape[0], -1)
    texts = [text for row in post.decode_batch(tokens, lengths) for text in row]
    return {c.POST_OUTPUT: np.array(texts, dtype=np.object_)}
