"""POST /v1/chat/completions: messages (tool calls and results included) rendered with the checkpoint's chat
template, the reply streamed or not, with usage, log probabilities, stop strings, function calling and
`response_format`.

The prompt is `qwen_triton.chat.render_chat`'s: without tools exactly what the preprocessing model renders
for `messages`; with tools, the format the checkpoint was trained on (Qwen2.5's template with `tools`,
the original Qwen's ReAct prompt), the oldest history dropped to fit `max_input_len`. A forced call
(`tool_choice` "required" or a named function) and `response_format` json_object / json_schema are
enforced in the engine by grammar-constrained decoding (its `guided_decoding_guide_type` /
`guided_decoding_guide` inputs). `logprobs` lists each generated token's log probability and, with
`top_logprobs` N (needs `logprobs`), the N most probable tokens at its position: the engine's
`qwen_triton_top_logprobs`, from the distribution the chosen token was drawn from (after logit_bias,
penalties and temperature, before top_p).
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from ..chat import ToolRequest, render_chat, tool_call_guide
from ..errors import InvalidRequestError
from .app_state import ServiceState
from .chat_reply import ChatReply
from .errors import bad_request, from_invalid
from .generation import TextGeneration
from .protocol import ChatCompletionRequest, JsonObjectFormat, JsonSchemaFormat
from .responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    chat_logprobs,
    usage,
)
from .sampling import check_prompt_len, check_request, engine_call, max_tokens, stop_strings
from .streaming import cancel_on_disconnect, event_stream, primed, sse


def tool_request(body: ChatCompletionRequest) -> ToolRequest:
    """The request's messages, tools and tool_choice, validated by the chat layer (400 naming the field)."""
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    tools = None if body.tools is None else [
        {"type": "function", "function": {k: v for k, v in t.function.model_dump().items() if v is not None}}
        for t in body.tools]
    choice = body.tool_choice if isinstance(body.tool_choice, str) or body.tool_choice is None \
        else body.tool_choice.model_dump()
    try:
        return ToolRequest.parse(messages, tools, choice)
    except InvalidRequestError as exc:
        raise from_invalid(exc) from None


def format_guide(body: ChatCompletionRequest) -> tuple[str, str] | None:
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
    reply: ChatReply
    logprobs: bool
    include_usage: bool


def _guide(body: ChatCompletionRequest, request: ToolRequest, fmt) -> tuple[str, str] | None:
    """The one grammar the reply must follow: a forced tool call's, or response_format's."""
    try:
        call = tool_call_guide(request, fmt) if fmt is not None else None
    except InvalidRequestError as exc:
        raise from_invalid(exc) from None
    return (call.type, call.text) if call is not None else format_guide(body)


def plan_chat(body: ChatCompletionRequest, state: ServiceState) -> ChatPlan:
    """Check the request and build its engine call (400/404 APIError naming the field)."""
    model = state.model
    check_request(body, model)
    if body.top_logprobs and not body.logprobs:
        raise bad_request("top_logprobs", "top_logprobs needs logprobs: true")
    request = tool_request(body)
    if request.choice.forced and format_guide(body) is not None:
        raise bad_request("response_format", "a forced tool call (tool_choice 'required' or a named function) "
                                             "cannot be combined with a json response_format")
    try:
        prompt = render_chat(model.tokenizer, request, default_system=model.default_system,
                             max_prompt_len=model.max_input_len)
    except InvalidRequestError as exc:
        raise from_invalid(exc, "messages") from None
    check_prompt_len(len(prompt.ids), model, "messages")
    requested, param = ((body.max_completion_tokens, "max_completion_tokens") if body.max_completion_tokens
                        is not None else (body.max_tokens, "max_tokens"))
    budget = max_tokens(requested, len(prompt.ids), model, param, None, "messages")
    call = engine_call(body, model, prompt.ids, budget, logprobs=bool(body.logprobs),
                       top_logprobs=body.top_logprobs or 0, guide=_guide(body, request, prompt.format),
                       extra_stops=prompt.stop)
    generation = TextGeneration(state.engine, call, model.tokenizer, stop_strings(body.stop) + prompt.stop)
    return ChatPlan(generation, ChatReply(prompt.format, prompt.reply_prefix), bool(body.logprobs),
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
    message = plan.reply.message(text)
    choice = ChatChoice(message=message, logprobs=logprobs, finish_reason=plan.reply.finish_reason(gen.finish_reason))
    return ChatCompletion(id=reply_id, created=created, model=state.model.name, choices=[choice],
                          usage=usage(gen.prompt_tokens, gen.completion_tokens))


async def _chunks(plan: ChatPlan, reply_id: str, created: int, state: ServiceState) -> AsyncIterator[bytes]:
    gen, reply = plan.generation, plan.reply

    def chunk(delta: ChatDelta | None, finish=None, logprobs=None, final_usage=None) -> bytes:
        choices = [] if delta is None else [ChatChunkChoice(delta=delta, logprobs=logprobs, finish_reason=finish)]
        return sse(ChatCompletionChunk(id=reply_id, created=created, model=state.model.name, choices=choices,
                                       usage=final_usage))

    async for piece in primed(gen.pieces()):
        if piece is None:  # the engine has accepted the request and answered (errors come before this)
            yield chunk(ChatDelta(role="assistant", content=""))
            continue
        logprobs = chat_logprobs(state.model.tokenizer, [piece]) if plan.logprobs else None
        for delta, delta_logprobs in reply.deltas(piece.text, logprobs):
            yield chunk(delta, logprobs=delta_logprobs)
    for delta in reply.finish():
        yield chunk(delta)
    yield chunk(ChatDelta(), finish=reply.finish_reason(gen.finish_reason))
    if plan.include_usage:
        yield chunk(None, final_usage=usage(gen.prompt_tokens, gen.completion_tokens))
