"""One reply as text: the engine's tokens detokenized incrementally, cut at the first stop string.

Stop strings are matched on the detokenized text, so a stop string is found whatever tokens it was
generated as. Text that could still turn out to be the start of a stop string is held back until it is
not; the stop string itself never reaches the client. When one matches, the engine request is cancelled
(the stream to Triton closes); the reply's token count is what the engine had sent by then. End ids
(`<|im_end|>`, `<|endoftext|>` for Qwen) end a reply in the engine and are never part of it.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from ..chat import IncrementalDetokenizer, Tokenizer
from .engine_client import EngineCall, EngineClient, TopPairs


class StopMatcher:
    """Finds the first of `stops` in a stream of text pieces; holds back a possible start of one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self._buffer = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text that is safe to send, whether a stop string ended the reply)."""
        self._buffer += text
        if not self.stops:
            out, self._buffer = self._buffer, ""
            return out, False
        hits = [i for i in (self._buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self._buffer = self._buffer[:min(hits)], ""
            return out, True
        keep = self._possible_start()
        cut = len(self._buffer) - keep
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out, False

    def flush(self) -> str:
        """The held-back text at the end of the reply (no stop string followed it)."""
        out, self._buffer = self._buffer, ""
        return out

    def _possible_start(self) -> int:
        """The length of the longest end of the buffer that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._buffer)), longest, -1):
                if self._buffer.endswith(stop[:k]):
                    longest = k
                    break
        return longest


@dataclass(frozen=True)
class Piece:
    """New reply text and the tokens that came with it (their log probabilities, and the most probable
    tokens at each position, when asked). The text of a token may come in a later piece (a character split
    over tokens, a possible stop string)."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[TopPairs, ...] | None = None


class TextGeneration:
    """Runs one engine call and yields its reply as `Piece`s; afterwards `completion_tokens` and
    `finish_reason` ("stop": an end id or a stop string; "length": max_tokens) say how it ended."""

    def __init__(self, engine: EngineClient, call: EngineCall, tokenizer: Tokenizer, stops: Sequence[str] = ()):
        self.engine, self.call, self.tokenizer = engine, call, tokenizer
        self.stops = tuple(stops)
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.call.prompt)

    async def pieces(self) -> AsyncIterator[Piece]:
        detok = IncrementalDetokenizer(self.tokenizer)
        matcher = StopMatcher(self.stops)
        async with contextlib.aclosing(self.engine.generate(self.call)) as chunks:
            async for chunk in chunks:
                self.completion_tokens += len(chunk.token_ids)
                text, stopped = matcher.push(detok.push(chunk.token_ids))
                if text or chunk.token_ids:
                    yield Piece(text, chunk.token_ids, chunk.logprobs, chunk.top_logprobs)
                if stopped:
                    self.finish_reason = "stop"
                    return  # closing `chunks` cancels the engine request
        text, stopped = matcher.push(detok.flush())
        text += "" if stopped else matcher.flush()
        self.finish_reason = "stop" if stopped or self.completion_tokens < self.call.max_tokens else "length"
        if text:
            yield Piece(text)

    async def text(self) -> tuple[str, list[Piece]]:
        """The whole reply, and its pieces (for log probabilities)."""
        pieces = [p async for p in self.pieces()]
        return "".join(p.text for p in pieces), pieces
