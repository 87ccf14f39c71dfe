"""POST /v1/completions (legacy): one prompt, given as text or token ids, continued as raw text.

A text prompt is tokenized as the preprocessing model tokenizes `text_input` (special-token text becomes
control tokens, so hand-written ChatML works; a BOS in front only where the checkpoint asks for one).
`echo` puts the prompt's text in front of the reply. `logprobs` N lists each generated token's log
probability and, for N > 0, the N most likely tokens at its position as {text: log probability} (the
engine's `qwen_triton_top_logprobs`).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from .app_state import ServiceState
from .errors import bad_request
from .generation import TextGeneration
from .protocol import CompletionRequest
from .responses import Completion, CompletionChoice, completion_logprobs, usage
from .sampling import check_prompt_len, check_request, check_text, engine_call, max_tokens, stop_strings
from .streaming import cancel_on_disconnect, event_stream, primed, sse

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


def prompt_ids(body: CompletionRequest, state: ServiceState) -> tuple[list[int], str | None]:
    """The prompt's token ids, and its text when it was given as text."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) > 1 and not isinstance(prompt[0], int):
            raise bad_request("prompt", f"one prompt per request is served, got {len(prompt)}", "unsupported_parameter")
        prompt = prompt[0] if not isinstance(prompt[0], int) else prompt
    if isinstance(prompt, list):
        vocab = state.model.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise bad_request("prompt", f"token ids must be in [0, {vocab})")
        return list(prompt), None
    tokenizer = state.model.tokenizer
    ids = tokenizer.encode(check_text(prompt, "prompt"), allow_special=True)
    if tokenizer.add_bos and ids[:1] != [tokenizer.bos_id]:
        ids.insert(0, tokenizer.bos_id)
    if not ids:
        raise bad_request("prompt", "the prompt is empty")
    return ids, prompt


def _generation(body: CompletionRequest, state: ServiceState) -> tuple[TextGeneration, str]:
    check_request(body, state.model)
    ids, text = prompt_ids(body, state)
    check_prompt_len(len(ids), state.model, "prompt")
    budget = max_tokens(body.max_tokens, len(ids), state.model, "max_tokens", DEFAULT_MAX_TOKENS, "prompt")
    call = engine_call(body, state.model, ids, budget, logprobs=body.logprobs is not None,
                       top_logprobs=body.logprobs or 0)
    echo = (text if text is not None else state.model.tokenizer.decode(ids)) if body.echo else ""
    return TextGeneration(state.engine, call, state.model.tokenizer, stop_strings(body.stop)), echo


async def completion(request: Request, body: CompletionRequest, state: ServiceState) -> Response | Completion:
    """The handler of POST /v1/completions."""
    generation, echo = _generation(body, state)
    reply_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return await event_stream(request, _chunks(body, generation, echo, reply_id, created, state))
    text, pieces = await cancel_on_disconnect(request, generation.text())
    logprobs = completion_logprobs(state.model.tokenizer, pieces, len(echo), top=bool(body.logprobs)) \
        if body.logprobs is not None else None
    choice = CompletionChoice(text=echo + text, logprobs=logprobs, finish_reason=generation.finish_reason)
    return Completion(id=reply_id, created=created, model=state.model.name, choices=[choice],
                      usage=usage(generation.prompt_tokens, generation.completion_tokens))


async def _chunks(body: CompletionRequest, generation: TextGeneration, echo: str, reply_id: str, created: int,
                  state: ServiceState) -> AsyncIterator[bytes]:
    def chunk(text: str, finish=None, logprobs=None, choices=True, final_usage=None) -> bytes:
        return sse(Completion(id=reply_id, created=created, model=state.model.name, usage=final_usage,
                              choices=[CompletionChoice(text=text, finish_reason=finish, logprobs=logprobs)]
                              if choices else []))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    offset = len(echo)
    async for piece in primed(generation.pieces()):
        if piece is None:  # the engine has accepted the request and answered (errors come before this)
            if echo:
                yield chunk(echo)
            continue
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(state.model.tokenizer, [piece], offset, top=bool(body.logprobs))
        offset += len(piece.text)
        if piece.text or logprobs is not None:
            yield chunk(piece.text, logprobs=logprobs)
    yield chunk("", finish=generation.finish_reason)
    if include_usage:
        yield chunk("", choices=False, final_usage=usage(generation.prompt_tokens, generation.completion_tokens))
