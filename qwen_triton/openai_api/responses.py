"""The response bodies of the OpenAI API as Pydantic models (the OpenAPI document's schemas), and the
log-probability shapes built from the engine's per-token log probabilities."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel

from ..chat import Tokenizer
from .engine_client import TopPairs
from .generation import Piece

FinishReason = Literal["stop", "length", "tool_calls"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# -- chat ----------------------------------------------------------------------------------------------
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# -- completions ---------------------------------------------------------------------------------------
class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": what} for status, what in (
    (400, "a field is missing, unknown, of the wrong type or out of range (named in `param`)"),
    (401, "the API key is missing or wrong"), (404, "no such model"), (413, "the body is too large"),
    (503, "Triton or the engine cannot serve now"))}


# -- log probabilities ---------------------------------------------------------------------------------
# JSON has no -inf: a token that could not be chosen (grammar, bad words) is listed at this floor, as vLLM does
_FLOOR = -9999.0


def _value(logprob: float) -> float:
    return max(logprob, _FLOOR)


def _token_text(tokenizer: Tokenizer, token: int) -> tuple[str, list[int]]:
    """A token as text (its bytes, which may end inside a character, decoded with U+FFFD) and its bytes:
    the chat layer's token bytes, special tokens in their surface form."""
    raw = tokenizer.token_bytes(token, skip_special=False)
    return raw.decode("utf-8", errors="replace"), list(raw)


def _tokens(piece: Piece) -> Iterator[tuple[int, float, TopPairs]]:
    """(token, its log probability, the most probable tokens there) for each token of a piece."""
    tops = piece.top_logprobs or ((),) * len(piece.token_ids)
    yield from zip(piece.token_ids, piece.logprobs or (), tops)


def _top_entry(tokenizer: Tokenizer, token: int, logprob: float) -> TopLogprob:
    text, raw = _token_text(tokenizer, token)
    return TopLogprob(token=text, logprob=_value(logprob), bytes=raw)


def chat_logprobs(tokenizer: Tokenizer, pieces: list[Piece]) -> ChoiceLogprobs:
    """OpenAI's chat `logprobs.content`: one entry per token the engine generated, each with the request's
    `top_logprobs` most probable tokens at its position (empty when it asked for none)."""
    content = []
    for piece in pieces:
        for token, logprob, top in _tokens(piece):
            text, raw = _token_text(tokenizer, token)
            content.append(TokenLogprob(token=text, logprob=_value(logprob), bytes=raw,
                                        top_logprobs=[_top_entry(tokenizer, t, v) for t, v in top]))
    return ChoiceLogprobs(content=content)


def completion_logprobs(tokenizer: Tokenizer, pieces: list[Piece], offset: int = 0,
                        top: bool = False) -> CompletionLogprobs:
    """The legacy completions' `logprobs` (text offsets counted from `offset`); with `top`, each position's
    most probable tokens as {text: log probability} (two tokens of the same text: the likelier one)."""
    tokens, values, offsets, tops = [], [], [], []
    for piece in pieces:
        for token, logprob, alternatives in _tokens(piece):
            text, _ = _token_text(tokenizer, token)
            tokens.append(text)
            values.append(_value(logprob))
            offsets.append(offset)
            offset += len(text)
            found: dict[str, float] = {}
            for t, v in alternatives:
                found.setdefault(_token_text(tokenizer, t)[0], _value(v))
            tops.append(found)
    return CompletionLogprobs(tokens=tokens, token_logprobs=values, text_offset=offsets,
                              top_logprobs=tops if top else None)
