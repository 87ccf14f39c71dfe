"""The response bodies of the OpenAI API as Pydantic models (the OpenAPI document's schemas), and the
log-probability shapes built from the engine's per-token log probabilities."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from ..chat import Tokenizer
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
def _token_text(tokenizer: Tokenizer, token: int) -> tuple[str, list[int]]:
    raw = tokenizer.token_bytes(token, skip_special=False)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tokenizer: Tokenizer, pieces: list[Piece]) -> ChoiceLogprobs:
    """OpenAI's chat `logprobs.content`: one entry per token the engine generated (top_logprobs empty:
    the engine returns the chosen token's log probability only)."""
    content = []
    for piece in pieces:
        for token, logprob in zip(piece.token_ids, piece.logprobs or ()):
            text, raw = _token_text(tokenizer, token)
            content.append(TokenLogprob(token=text, logprob=logprob, bytes=raw, top_logprobs=[]))
    return ChoiceLogprobs(content=content)


def completion_logprobs(tokenizer: Tokenizer, pieces: list[Piece], offset: int = 0) -> CompletionLogprobs:
    """The legacy completions' `logprobs` (text offsets counted from `offset`)."""
    tokens, values, offsets = [], [], []
    for piece in pieces:
        for token, logprob in zip(piece.token_ids, piece.logprobs or ()):
            text, _ = _token_text(tokenizer, token)
            tokens.append(text)
            values.append(logprob)
            offsets.append(offset)
            offset += len(text)
    return CompletionLogprobs(tokens=tokens, token_logprobs=values, text_offset=offsets)
