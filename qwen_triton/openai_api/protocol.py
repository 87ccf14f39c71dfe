"""The request bodies of the OpenAI API, as Pydantic models (they make the service's OpenAPI document).

Fields follow OpenAI's API reference. Unknown fields are refused (`extra="forbid"`), values are checked
strictly (no "1" for 1) and within OpenAI's ranges; a refused body is answered 400 naming the field
(`errors.py`). Fields OpenAI has but this server cannot honour are declared here too, so that a request
setting them is refused by name instead of silently ignored (`unsupported_fields`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Stop = str | Annotated[list[str], Field(max_length=4)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # accepted; this server never pads chunks


class _Sampling(_Body):
    """What chat and completion requests share."""

    model: str
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    seed: int | None = None
    stop: Stop | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    user: str | None = None


# -- chat ----------------------------------------------------------------------------------------------
class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(_Body):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Body):
    role: Literal["user"]
    content: str | list[TextPart]
    name: str | None = None


class AssistantMessage(_Body):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(_Body):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionDefinition(_Body):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchema(_Body):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(_Body):
    type: Literal["text"]


class JsonObjectFormat(_Body):
    type: Literal["json_object"]


class JsonSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # OpenAI features a text-only model served this way does not have (refused when set)
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    """POST /v1/completions (legacy): one prompt, as text or token ids."""

    prompt: str | Annotated[list[str], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)] \
        | Annotated[list[list[int]], Field(min_length=1)]
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    best_of: Annotated[int, Field(ge=1, le=20)] | None = None
    suffix: str | None = None


_UNSUPPORTED = {
    "audio": "audio output is not supported: the model is text-only",
    "modalities": "only the text modality is supported",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "reasoning_effort is for reasoning models; this model has no such setting",
    "verbosity": "verbosity is not supported",
    "web_search_options": "web search is not supported",
    "functions": "the deprecated `functions` are not supported: send `tools`",
    "function_call": "the deprecated `function_call` is not supported: send `tool_choice`",
    "suffix": "suffix (insertion) is not supported",
}


def unsupported_fields(body: BaseModel) -> tuple[str, str] | None:
    """(field, why) for the first field set to something this server cannot honour, else None."""
    for name, why in _UNSUPPORTED.items():
        value = getattr(body, name, None)
        if name == "modalities" and value in (None, ["text"]):
            continue
        if value is not None:
            return name, why
    n = getattr(body, "n", None)
    if n not in (None, 1):
        return "n", f"only n=1 is supported (one choice per request), got {n}"
    best_of = getattr(body, "best_of", None)
    if best_of not in (None, 1):
        return "best_of", f"only best_of=1 is supported, got {best_of}"
    return None
