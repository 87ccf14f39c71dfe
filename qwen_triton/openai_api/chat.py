"""POST /v1/chat/completions: messages rendered with the checkpoint's chat template, the reply streamed or
not, with usage, log probabilities, stop strings and `response_format`.

Messages are rendered as the preprocessing model renders `messages` (qwen_triton.chat.render_prompt:
the checkpoint's own template, the original Qwen's ChatML for qwen.tiktoken checkpoints; the oldest
history is dropped to fit `max_input_len`). `developer` messages are system messages. `response_format`
json_object / json_schema is enforced in the engine by grammar-constrained decoding (its
`guided_decoding_guide_type` / `guided_decoding_guide` inputs). `logprobs` lists each generated token's
log probability; `top_logprobs` above 0 is refused by name: the engine returns the chosen token's only.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from ..chat import parse_messages, render_prompt
from ..errors import InvalidRequestError
from .app_state import ServiceState
from .errors import bad_request, from_invalid
from .generation import TextGeneration
from .protocol import ChatCompletionRequest, JsonObjectFormat, JsonSchemaFormat, TextPart
from .responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    chat_logprobs,
    usage,
)
from .sampling import check_prompt_len, check_request, engine_call, max_tokens, stop_strings
from .streaming import cancel_on_disconnect, event_stream, primed, sse


def message_dicts(body: ChatCompletionRequest) -> list[dict]:
    """The request's messages as the chat layer takes them ({"role", "content"}, plus tool fields)."""
    out = []
    for m in body.messages:
        item = m.model_dump(exclude_none=True)
        if item["role"] == "developer":
            item["role"] = "system"
        if isinstance(m.content, list):
            item["content"] = "".join(p.text for p in m.content if isinstance(p, TextPart))
        item.pop("name", None)
        out.append(item)
    return out


def guide_of(body: ChatCompletionRequest) -> tuple[str, str] | None:
    """response_format as the engine's guide: ("json", "") or ("json_schema", schema text); None for text."""
    fmt = body.response_format
    if isinstance(fmt, JsonObjectFormat):
        return "json", ""
    if isinstance(fmt, JsonSchemaFormat):
        schema = fmt.json_schema.schema_
        if schema is None:
            raise bad_request("response_format.json_schema.schema", "a json_schema response_format needs a schema")
        return "json_schema", json.dumps(schema, ensure_ascii=False)
    return None


@dataclass(frozen=True)
class ChatPlan:
    """A checked chat request: its engine work and how to shape the reply."""

    generation: TextGeneration
    logprobs: bool
    include_usage: bool


def plan_chat(body: ChatCompletionRequest, state: ServiceState) -> ChatPlan:
    """Check the request and build its engine call (400/404 APIError naming the field)."""
    model = state.model
    check_request(body, model)
    if body.top_logprobs:
        raise bad_request("top_logprobs", f"top_logprobs={body.top_logprobs} cannot be served: the engine returns "
                                          "only the chosen token's log probability (use logprobs without "
                                          "top_logprobs, or top_logprobs=0)", "unsupported_parameter")
    if body.tools or body.tool_choice not in (None, "none", "auto") or any(
            m.role == "tool" or getattr(m, "tool_calls", None) for m in body.messages):
        raise bad_request("tools", "function calling is not available on this server", "unsupported_parameter")
    try:
        ids = render_prompt(model.tokenizer, parse_messages(message_dicts(body)), default_system=model.default_system,
                            max_prompt_len=model.max_input_len)
    except InvalidRequestError as exc:
        raise from_invalid(exc, "messages") from None
    check_prompt_len(len(ids), model, "messages")
    requested, param = ((body.max_completion_tokens, "max_completion_tokens") if body.max_completion_tokens
                        is not None else (body.max_tokens, "max_tokens"))
    budget = max_tokens(requested, len(ids), model, param, None, "messages")
    call = engine_call(body, model, ids, budget, logprobs=bool(body.logprobs), guide=guide_of(body))
    generation = TextGeneration(state.engine, call, model.tokenizer, stop_strings(body.stop))
    return ChatPlan(generation, bool(body.logprobs),
                    bool(body.stream_options and body.stream_options.include_usage))


async def chat_completion(request: Request, body: ChatCompletionRequest,
                          state: ServiceState) -> Response | ChatCompletion:
    """The handler of POST /v1/chat/completions."""
    plan = plan_chat(body, state)
    reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return await event_stream(request, _chunks(plan, reply_id, created, state))
    gen = plan.generation
    text, pieces = await cancel_on_disconnect(request, gen.text())
    logprobs = chat_logprobs(state.model.tokenizer, pieces) if plan.logprobs else None
    choice = ChatChoice(message=ChatMessageOut(content=text), logprobs=logprobs, finish_reason=gen.finish_reason)
    return ChatCompletion(id=reply_id, created=created, model=state.model.name, choices=[choice],
                          usage=usage(gen.prompt_tokens, gen.completion_tokens))


async def _chunks(plan: ChatPlan, reply_id: str, created: int, state: ServiceState) -> AsyncIterator[bytes]:
    gen = plan.generation

    def chunk(delta: ChatDelta | None, finish=None, logprobs=None, final_usage=None) -> bytes:
        choices = [] if delta is None else [ChatChunkChoice(delta=delta, logprobs=logprobs, finish_reason=finish)]
        return sse(ChatCompletionChunk(id=reply_id, created=created, model=state.model.name, choices=choices,
                                       usage=final_usage))

    async for piece in primed(gen.pieces()):
        if piece is None:  # the engine has accepted the request and answered (errors come before this)
            yield chunk(ChatDelta(role="assistant", content=""))
            continue
        logprobs = chat_logprobs(state.model.tokenizer, [piece]) if plan.logprobs else None
        if piece.text or (logprobs is not None and logprobs.content):
            yield chunk(ChatDelta(content=piece.text), logprobs=logprobs)
    yield chunk(ChatDelta(), finish=gen.finish_reason)
    if plan.include_usage:
        yield chunk(None, final_usage=usage(gen.prompt_tokens, gen.completion_tokens))
