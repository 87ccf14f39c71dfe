"""OpenAI request fields -> the engine call: what chat and completion requests share.

The model name must be the served one (404 otherwise, as OpenAI). Sampling fields left out are left to
the engine, which then uses the checkpoint's generation_config.json (greedy for the default model).
`max_tokens` defaults to what fits the context and the build's `max_output_len`; a larger one is refused
naming the field. `logit_bias` becomes the engine's `embedding_bias` (a bias per token id added to the
raw logits); `stop` strings are matched on the text (generation.py) and also given to the engine as
token sequences, so that it stops at once when the reply spells one the way it tokenizes alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from .config import ServedModel
from .engine_client import EngineCall
from .errors import APIError, bad_request
from .protocol import unsupported_fields


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string under `value` that holds a lone surrogate, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
    elif isinstance(value, dict):
        return next((p for k, v in value.items() if (p := _lone_surrogate(k, path) or _lone_surrogate(
            v, f"{path}.{k}" if path else str(k)))), None)
    elif isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := _lone_surrogate(v, f"{path}[{i}]"))), None)
    return None


def check_request(body: BaseModel, model: ServedModel) -> None:
    """400 for text that is not UTF-8 (JSON can escape a lone surrogate, "\\ud800"), 404 for another model's
    name, 400 for a field this server cannot honour."""
    where = _lone_surrogate(body.model_dump(by_alias=True), "")
    if where is not None:
        raise bad_request(where or None, f"{where or 'the body'} holds a lone surrogate (not valid UTF-8 text)")
    if body.model != model.name:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {model.name!r} "
                            "(GET /v1/models)", "model", "model_not_found")
    refused = unsupported_fields(body)
    if refused is not None:
        raise bad_request(refused[0], refused[1], "unsupported_parameter")


def stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)


def check_text(value: str, param: str) -> str:
    """Text the tokenizer can take: no lone surrogates (JSON can escape one, "\\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(param, f"{param} holds a lone surrogate (not valid UTF-8 text)") from None
    return value


def max_tokens(requested: int | None, prompt_len: int, model: ServedModel, param: str, default: int | None,
               prompt_param: str) -> int:
    """The reply's token budget: `requested` (the field `param`), else `default` (None: all that fits),
    within the limits; a prompt (the field `prompt_param`) that leaves no room is refused."""
    room = model.reply_room(prompt_len)
    if room < 1:
        why = f"the prompt has {prompt_len} tokens and leaves no room for a reply in the model's context of " \
              f"{model.max_model_len} tokens"
        raise bad_request(prompt_param, why, "context_length_exceeded")
    if requested is None:
        return room if default is None else min(default, room)
    if model.max_output_len is not None and requested > model.max_output_len:
        raise bad_request(param, f"{param} is {requested}; this server allows at most {model.max_output_len} "
                                 "tokens per reply (max_output_len)")
    if requested > room:
        raise bad_request(param, f"the prompt has {prompt_len} tokens and {param} is {requested}: more than the "
                                 f"model's context of {model.max_model_len} tokens (at most {room} here)",
                          "context_length_exceeded")
    return requested


def check_prompt_len(prompt_len: int, model: ServedModel, param: str) -> None:
    if model.max_input_len is not None and prompt_len > model.max_input_len:
        raise bad_request(param, f"the prompt has {prompt_len} tokens; this server takes at most "
                                 f"{model.max_input_len} (max_input_len)", "context_length_exceeded")


def logit_bias(bias: dict[str, float] | None, model: ServedModel) -> dict[int, float]:
    """{"token id": bias} -> {id: bias}; ids must be tokens of the model's tokenizer."""
    out: dict[int, float] = {}
    vocab = model.tokenizer.vocab_size
    for key, value in (bias or {}).items():
        if not key.isdigit() or int(key) >= vocab:
            raise bad_request("logit_bias", f"logit_bias keys must be token ids in [0, {vocab}), got {key!r}")
        if value:
            out[int(key)] = float(value)
    return out


def stop_words(stops: Sequence[str], model: ServedModel) -> tuple[tuple[int, ...], ...]:
    """Each stop string as the engine's token sequence (as it tokenizes alone)."""
    words = (tuple(model.tokenizer.encode(check_text(s, "stop"))) for s in stops)
    return tuple(w for w in words if w)


def engine_call(body, model: ServedModel, prompt: Sequence[int], budget: int, logprobs: bool,
                guide: tuple[str, str] | None = None, extra_stops: Sequence[str] = (),
                top_logprobs: int = 0) -> EngineCall:
    """The engine call of a checked request whose prompt is `prompt` and reply budget `budget` (`extra_stops`:
    stop strings the prompt's format adds; `top_logprobs`: alternatives per token, only with `logprobs`). The
    engine streams its tokens when the client streams, or when stop strings must be able to end the request
    early; else it answers once (one response, not one per token)."""
    stops = stop_strings(body.stop) + tuple(extra_stops)
    return EngineCall(
        prompt=tuple(prompt), max_tokens=budget, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, logprobs=logprobs,
        top_logprobs=top_logprobs if logprobs else 0,
        logit_bias=logit_bias(body.logit_bias, model), stop_words=stop_words(stops, model),
        guide=guide, streaming=model.decoupled and bool(body.stream or stops))
