"""Function calling, the request side: OpenAI `messages` (with assistant `tool_calls` and `tool`
results), `tools` and `tool_choice`, validated into typed values.

The rest of function calling lives beside this module:

* `tool_render.py`: a `ToolRequest` -> the prompt the checkpoint was trained on (`render_chat`);
* `tool_parse.py`: generated text -> content and `tool_calls`, one-shot and streaming;
* `tool_guides.py`: the grammar that forces a tool call (`tool_choice` required or named).

Everything here is plain Python; only `tool_guides` imports xgrammar (and torch with it), lazily.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from ..errors import InvalidRequestError
from .messages import FIELD as MESSAGES_FIELD
from .messages import content_text

TOOLS_FIELD = "tools"
TOOL_CHOICE_FIELD = "tool_choice"
TOOL_ROLES = ("system", "developer", "user", "assistant", "tool")
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names


class ToolFormat(str, Enum):
    """How a checkpoint writes tool calls.

    HERMES: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` through the checkpoint's
    own chat template (Qwen2.5, Qwen3: their templates render `tools` into the system prompt).
    REACT: the original Qwen-7B-Chat's ReAct prompt (Thought / Action / Action Input / Observation),
    for checkpoints whose template has no tool format.
    """

    HERMES = "hermes"
    REACT = "react"


@dataclass(frozen=True)
class FunctionTool:
    """One `{"type": "function", "function": {...}}` entry of `tools`."""

    name: str
    description: str
    parameters: Mapping[str, Any]   # a JSON schema of the arguments object ({} when the request has none)
    spec: Mapping[str, Any]         # the request's entry as given: templates render it as is


ChoiceMode = Literal["none", "auto", "required", "function"]


@dataclass(frozen=True)
class ToolChoice:
    """`tool_choice`: none, auto, required, or one named function (mode "function")."""

    mode: ChoiceMode = "auto"
    name: str | None = None

    @property
    def forced(self) -> bool:
        """Whether the reply must be a tool call (a grammar guides the decoding)."""
        return self.mode in ("required", "function")


@dataclass(frozen=True)
class ToolCall:
    """A complete tool call; `arguments` is JSON text of an object."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        """The `tool_calls` entry of a chat completion message."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ChatTurn:
    """One message of a tool-calling chat. `content` is None only for an assistant message that
    only calls tools; `tool_calls` only on assistant messages; `tool_call_id`/`name` on tool results."""

    role: str
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ToolRequest:
    """The tool-calling part of a chat completion request, validated."""

    messages: tuple[ChatTurn, ...]
    tools: tuple[FunctionTool, ...] = ()
    choice: ToolChoice = ToolChoice("none")

    @classmethod
    def parse(cls, messages: Any, tools: Any = None, tool_choice: Any = None) -> ToolRequest:
        """Validate the request's JSON values; InvalidRequestError names the offending field."""
        parsed_tools = parse_tools(tools)
        return cls(parse_turns(messages), parsed_tools, parse_tool_choice(tool_choice, parsed_tools))

    @property
    def active_tools(self) -> tuple[FunctionTool, ...]:
        """The tools the prompt offers: none when `tool_choice` is "none"."""
        return () if self.choice.mode == "none" else self.tools

    @property
    def uses_tools(self) -> bool:
        """Whether the prompt needs the tool format: tools offered, or tool calls in the history."""
        return bool(self.active_tools) or any(m.role == "tool" or m.tool_calls for m in self.messages)


def new_call_id(rng: random.Random | None = None) -> str:
    """`call_` and 24 random hex digits; `rng` makes ids reproducible (tests)."""
    bits = (rng or random.SystemRandom()).getrandbits(96)
    return f"call_{bits:024x}"


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def parse_tools(tools: Any) -> tuple[FunctionTool, ...]:
    """`tools`: a list of function tools with unique names; None or [] for none."""
    if tools is None:
        return ()
    if not isinstance(tools, (list, tuple)):
        raise InvalidRequestError(TOOLS_FIELD, "must be a list of tools")
    parsed = tuple(_parse_tool(i, t) for i, t in enumerate(tools))
    names = [t.name for t in parsed]
    if len(set(names)) != len(names):
        raise InvalidRequestError(TOOLS_FIELD, "function names must be unique")
    return parsed


def _parse_tool(index: int, tool: Any) -> FunctionTool:
    where = f"tool {index}"
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
        raise InvalidRequestError(TOOLS_FIELD, f"{where} must be an object of type 'function'")
    fn = tool.get("function")
    if not isinstance(fn, Mapping):
        raise InvalidRequestError(TOOLS_FIELD, f"{where} needs a 'function' object")
    name = fn.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise InvalidRequestError(TOOLS_FIELD, f"{where}: the name must be 1-64 letters, digits, '_' or '-'")
    description = fn.get("description", "")
    if not isinstance(description, str):
        raise InvalidRequestError(TOOLS_FIELD, f"{where}: description must be a string")
    parameters = fn.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, Mapping):
        raise InvalidRequestError(TOOLS_FIELD, f"{where}: parameters must be a JSON schema object")
    return FunctionTool(name, description, parameters, tool)


def parse_tool_choice(choice: Any, tools: Sequence[FunctionTool]) -> ToolChoice:
    """`tool_choice`; absent means "auto" with tools and "none" without, as OpenAI's API says."""
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if choice in ("none", "auto", "required"):
        mode: ChoiceMode = choice
        if mode == "required" and not tools:
            raise InvalidRequestError(TOOL_CHOICE_FIELD, "'required' needs at least one tool in 'tools'")
        return ToolChoice(mode)
    fn = choice.get("function") if isinstance(choice, Mapping) and choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str):
        raise InvalidRequestError(TOOL_CHOICE_FIELD, "must be 'none', 'auto', 'required' or "
                                                     '{"type": "function", "function": {"name": ...}}')
    if name not in {t.name for t in tools}:
        raise InvalidRequestError(TOOL_CHOICE_FIELD, f"names function {name!r}, which is not in 'tools'")
    return ToolChoice("function", name)


def parse_turns(messages: Any) -> tuple[ChatTurn, ...]:
    """`messages` with tool calls and results. The last message must be a user message or a tool result."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidRequestError(MESSAGES_FIELD, "must be a non-empty list of messages")
    turns = tuple(_parse_turn(i, m) for i, m in enumerate(messages))
    if turns[-1].role not in ("user", "tool"):
        raise InvalidRequestError(MESSAGES_FIELD, f"the last message must come from the user or a tool, "
                                                  f"not {turns[-1].role!r}")
    return turns


def _parse_turn(index: int, item: Any) -> ChatTurn:
    if not isinstance(item, Mapping) or item.get("role") not in TOOL_ROLES:
        raise InvalidRequestError(MESSAGES_FIELD, f"message {index} must be an object with a role in {TOOL_ROLES}")
    role = "system" if item["role"] == "developer" else item["role"]
    calls = _parse_calls(index, item.get("tool_calls")) if role == "assistant" else ()
    content = item.get("content")
    if content is None and not (role == "assistant" and calls):
        raise InvalidRequestError(MESSAGES_FIELD, f"message {index} needs content")
    text = None if content is None else content_text(index, content)
    if role != "tool":
        return ChatTurn(role, text, calls)
    call_id, name = item.get("tool_call_id"), item.get("name")
    if not isinstance(call_id, str) or not (name is None or isinstance(name, str)):
        raise InvalidRequestError(MESSAGES_FIELD, f"tool message {index} needs a string tool_call_id")
    return ChatTurn(role, text, (), call_id, name)


def _parse_calls(index: int, calls: Any) -> tuple[ToolCall, ...]:
    if calls is None:
        return ()
    if not isinstance(calls, (list, tuple)):
        raise InvalidRequestError(MESSAGES_FIELD, f"message {index}: tool_calls must be a list")
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, Mapping) else None
        name = fn.get("name") if isinstance(fn, Mapping) else None
        arguments = fn.get("arguments", "{}") if isinstance(fn, Mapping) else None
        call_id = call.get("id", "") if isinstance(call, Mapping) else None
        if not (isinstance(name, str) and isinstance(arguments, str) and isinstance(call_id, str)):
            raise InvalidRequestError(MESSAGES_FIELD, f"message {index}: each tool call needs an id and a "
                                                      "function with a name and JSON text arguments")
        out.append(ToolCall(call_id, name, arguments))
    return tuple(out)


def arguments_value(arguments: str) -> Any:
    """A call's arguments as a JSON value (templates render objects), the text itself when not JSON."""
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments
