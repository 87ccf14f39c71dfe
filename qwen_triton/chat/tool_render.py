"""Function calling, the prompt: a `ToolRequest` rendered the way the checkpoint was trained.

* HERMES (Qwen2.5, Qwen3): the checkpoint's own jinja template gets `tools` and the messages, as
  transformers' `apply_chat_template(messages, tools=tools, add_generation_prompt=True)` renders
  them. Tool call arguments, JSON text in OpenAI's API, are handed to the template as objects (the
  templates `tojson` them, which would otherwise quote the text again).
* REACT (the original Qwen-7B-Chat, and templates without a tool format): the ReAct prompt of the
  original project's openai_api.py. The tools are described in the last user message, a call is
  "Action: name / Action Input: {json}", a result is "Observation: ...", and a reply that follows
  a result continues the open assistant turn after "Thought:". Replies stop at "Observation:".

`tool_choice` "none" renders no tools; "required" and a named function render as "auto" (a grammar
from `tool_guides` forces the call).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError
from .messages import FIELD, ChatMessage
from .template import (
    DEFAULT_MAX_WINDOW_SIZE,
    DEFAULT_SYSTEM,
    ChatTemplate,
    RenderedPrompt,
    fit_to_window,
    is_original_qwen,
    render_qwen_chatml,
    render_template_messages,
)
from .tokenizer import Tokenizer
from .tools import ChatTurn, FunctionTool, ToolFormat, ToolRequest, arguments_value

OBSERVATION = "Observation:"
THOUGHT = "Thought:"

# The original Qwen's ReAct prompt, word for word: the model was tuned on this text.
_TOOL_DESC = ("{name}: Call this tool to interact with the {name} API. What is the {name} API useful for? "
              "{description} Parameters: {parameters} Format the arguments as a JSON object.")
_REACT_INSTRUCTION = """Answer the following questions as best you can. You have access to the following APIs:

{tools}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{names}]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can be repeated zero or more times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!"""


@dataclass(frozen=True)
class ToolPrompt:
    """A chat request's prompt and how to read its reply."""

    ids: tuple[int, ...]
    text: str                        # the prompt as text (special tokens written out)
    format: ToolFormat | None        # how replies write tool calls; None: tools are off, replies are content
    stop: tuple[str, ...] = ()       # stop strings the request must add (ReAct: "Observation:")
    reply_prefix: str = ""           # what the prompt already wrote of the reply (ReAct: "Thought:")


def tool_format_for(tokenizer: Tokenizer, template: ChatTemplate | None = None) -> ToolFormat:
    """HERMES when the chat template writes `<tool_call>` (Qwen2.5, Qwen3), else REACT."""
    source = template.source if template is not None else tokenizer.chat_template
    return ToolFormat.HERMES if source and "<tool_call>" in source else ToolFormat.REACT


def render_chat(tokenizer: Tokenizer, request: ToolRequest, template: ChatTemplate | None = None,
                default_system: str = DEFAULT_SYSTEM, max_window_size: int = DEFAULT_MAX_WINDOW_SIZE,
                max_prompt_len: int | None = None) -> ToolPrompt:
    """The prompt of a chat request with or without tools.

    Without tools (and no tool calls in the history) this is `render_prompt`'s prompt. The oldest
    history is dropped to fit `max_prompt_len` as `render_prompt` does (whole user turns, so that a
    tool result never loses its call).
    """
    fmt = tool_format_for(tokenizer, template) if request.uses_tools else None
    parse_as = fmt if request.active_tools else None
    if fmt is ToolFormat.REACT:
        messages, prefill = react_messages(request, default_system)
        stop = (OBSERVATION,) if request.active_tools else ()
        prompt = _render_plain(tokenizer, messages, prefill, template, default_system, max_window_size,
                               max_prompt_len)
        return ToolPrompt(prompt.ids, prompt.text, parse_as, stop, THOUGHT if prefill else "")
    if fmt is None and is_original_qwen(tokenizer, template):
        plain = [ChatMessage(m.role, m.content or "") for m in request.messages]
        prompt = _render_plain(tokenizer, plain, "", template, default_system, max_window_size, max_prompt_len)
        return ToolPrompt(prompt.ids, prompt.text, None)
    dicts = [template_message(m) for m in request.messages]
    tools = [tool.spec for tool in request.active_tools]
    variables = {"tools": tools} if tools else {}
    prompt = fit_to_window([m.role for m in request.messages], max_prompt_len, lambda keep: render_template_messages(
        tokenizer, [dicts[i] for i in keep], template, default_system, **variables), size=_size)
    return ToolPrompt(prompt.ids, prompt.text, parse_as)


def _size(prompt: RenderedPrompt) -> int:
    return len(prompt.ids)


def template_message(turn: ChatTurn) -> dict[str, Any]:
    """A message as chat templates read it (OpenAI's shape; call arguments as JSON values)."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content or ""}
    if turn.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": arguments_value(c.arguments)}}
                                 for c in turn.tool_calls]
    if turn.role == "tool":
        message["tool_call_id"] = turn.tool_call_id
        if turn.name is not None:
            message["name"] = turn.name
    return message


def _render_plain(tokenizer: Tokenizer, messages: Sequence[ChatMessage], prefill: str,
                  template: ChatTemplate | None, default_system: str, max_window_size: int,
                  max_prompt_len: int | None) -> RenderedPrompt:
    """system/user/assistant messages (ending with a user message) and a reply `prefill`, through
    make_context for the original Qwen, else through the template."""
    if is_original_qwen(tokenizer, template):
        ids = render_qwen_chatml(tokenizer, messages, default_system, max_window_size, max_prompt_len, prefill)
        return RenderedPrompt(tokenizer.decode(ids, skip_special=False), tuple(ids))
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    return fit_to_window([m.role for m in messages], max_prompt_len, lambda keep: render_template_messages(
        tokenizer, [dicts[i] for i in keep], template, default_system, prefill=prefill), size=_size)


# ----------------------------------------------------------------------------------------------
# ReAct
# ----------------------------------------------------------------------------------------------
def react_instruction(tools: Sequence[FunctionTool]) -> str:
    """The ReAct instruction that describes `tools` (empty without tools)."""
    if not tools:
        return ""
    described = "\n\n".join(_TOOL_DESC.format(name=t.name, description=t.description,
                                              parameters=json.dumps(t.parameters, ensure_ascii=False))
                            for t in tools)
    return _REACT_INSTRUCTION.format(tools=described, names=", ".join(t.name for t in tools))


def _clean(text: str) -> str:
    return text.lstrip("\n").rstrip()


def react_messages(request: ToolRequest, default_system: str) -> tuple[list[ChatMessage], str]:
    """The chat as plain system/user/assistant messages in the ReAct format, and the open assistant
    turn the reply continues ("" when the last message is a user message).

    Tool results are appended to the assistant turn that called them; the instruction goes before
    the last user message ("...\\n\\nQuestion: <message>"); with tools, an assistant answer without
    calls is written as a final answer.
    """
    turns = list(request.messages)
    system = default_system
    if turns[0].role == "system":
        system, turns = _clean(turns[0].content or ""), turns[1:]
    instruction = react_instruction(request.active_tools)
    out: list[list[str]] = []  # [role, content], merged as the original does
    for index, turn in enumerate(turns):
        _add_react_turn(out, turn, index, bool(instruction))
    prefill = ""
    if out and out[-1][0] == "assistant":  # the last message was a tool result
        prefill = _clean(out.pop()[1]) + f"\n{THOUGHT}"
    if instruction:
        last_user = max(i for i, (role, _) in enumerate(out) if role == "user")
        out[last_user][1] = f"{instruction}\n\nQuestion: {out[last_user][1]}"
    return [ChatMessage("system", system), *(ChatMessage(r, _clean(c)) for r, c in out)], prefill


def _add_react_turn(out: list[list[str]], turn: ChatTurn, index: int, with_tools: bool) -> None:
    text = _clean(turn.content or "")
    if turn.role == "user":
        out.append(["user", text])
        return
    if turn.role == "system":
        raise InvalidRequestError(FIELD, "a system message may only be the first message")
    if not out:
        raise InvalidRequestError(FIELD, f"message {index}: a {turn.role} message must follow a user message")
    if turn.role == "tool":
        if out[-1][0] != "assistant":
            raise InvalidRequestError(FIELD, f"message {index}: a tool result must follow an assistant's call")
        out[-1][1] += f"\n{OBSERVATION} {text}"
        return
    if turn.tool_calls:
        text = text if text.startswith(THOUGHT) else f"{THOUGHT} {text}"
        text += "".join(f"\nAction: {c.name}\nAction Input: {c.arguments}" for c in turn.tool_calls)
    elif with_tools:
        text = f"{THOUGHT} I now know the final answer.\nFinal Answer: {text}"
    if out[-1][0] == "user":
        out.append(["assistant", _clean(text)])
    else:
        out[-1][1] += "\n" + text
