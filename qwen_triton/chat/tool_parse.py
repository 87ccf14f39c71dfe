"""Function calling, the reply: generated text -> content and tool calls, in one go (`parse_reply`)
or as text deltas arrive (`ToolCallStream`), the two always agreeing.

HERMES replies: each `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` block (the closing
tag may be missing at the end) becomes a call; whitespace next to a call is dropped from the content.
REACT replies: "Action: name / Action Input: {json}" (up to "Observation:") becomes a call, the
thought before it the content; "Final Answer: x" makes x the content; a reply that starts with none
of the ReAct labels is content, up to an "Action:" line that makes a call.

A block that is not a valid call (not JSON, no name, arguments not an object) stays in the content
as written: parsing never raises, and every call's `arguments` is JSON text of an object. The
stream sends content as soon as it cannot be part of a call (it holds back a possible start of a
tag), and a call whole once its block has ended: first its id and name, then its arguments.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from .tools import ToolCall, ToolFormat, new_call_id

OPEN, CLOSE = "<tool_call>", "</tool_call>"
ACTION, ACTION_INPUT, OBSERVATION = "Action:", "Action Input:", "Observation:"
THOUGHT, FINAL_ANSWER = "Thought:", "Final Answer:"
REACT_LABELS = (THOUGHT, ACTION, FINAL_ANSWER)


@dataclass(frozen=True)
class ToolCallDelta:
    """One `delta.tool_calls` entry of a streamed chunk."""

    index: int
    id: str | None = None       # with the name, on a call's first delta
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"], out["type"] = self.id, "function"
        function: dict[str, str] = {} if self.name is None else {"name": self.name}
        function["arguments"] = self.arguments
        out["function"] = function
        return out


@dataclass(frozen=True)
class StreamDelta:
    """What one streamed chunk carries: content text, or one tool call delta."""

    content: str = ""
    tool_call: ToolCallDelta | None = None

    def to_openai(self) -> dict[str, Any]:
        """The chunk's `delta` object."""
        if self.tool_call is not None:
            return {"tool_calls": [self.tool_call.to_openai()]}
        return {"content": self.content}


@dataclass(frozen=True)
class ParsedReply:
    """A whole reply: content (None when empty) and tool calls."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()

    def to_openai(self) -> dict[str, Any]:
        """The chat completion's `message` object."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        return message


# ----------------------------------------------------------------------------------------------
# JSON of calls
# ----------------------------------------------------------------------------------------------
def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity: Python reads them, JSON has none


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError, too many digits, nested too deeply
        return None
    return value if isinstance(value, dict) else None


def _arguments_text(arguments: dict[str, Any]) -> str | None:
    try:
        text = json.dumps(arguments, ensure_ascii=False)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # an escaped lone surrogate: keep it escaped
        return json.dumps(arguments)
    except (ValueError, RecursionError):
        return None


def hermes_call(body: str) -> tuple[str, str] | None:
    """(name, arguments JSON) of a `<tool_call>` body, None when it is not a valid call."""
    obj = _json_object(body.strip())
    if obj is None:
        return None
    name = obj.get("name")
    arguments = obj["arguments"] if "arguments" in obj else obj.get("parameters", {})
    if isinstance(arguments, str):
        arguments = _json_object(arguments)
    if not isinstance(name, str) or not name.strip() or not isinstance(arguments, dict):
        return None
    text = _arguments_text(arguments)
    return None if text is None else (name, text)


def react_call(block: str) -> tuple[str, str] | None:
    """(name, arguments JSON) of "Action: name\\nAction Input: {...}" (up to an "Observation:" line)."""
    observation = _find_label(block, OBSERVATION, 1)
    if observation != -1:
        block = block[:observation]
    start = _find_label(block, ACTION_INPUT, 1)
    if not block.startswith(ACTION) or start == -1:
        return None
    name = block[len(ACTION):start].strip()
    arguments = _json_object(block[start + len(ACTION_INPUT):].strip())
    if not name or "\n" in name or arguments is None:
        return None
    text = _arguments_text(arguments)
    return None if text is None else (name, text)


def _find_label(text: str, label: str, start: int = 0) -> int:
    """Index of the first `label` at the start of a line, at or after `start`; -1 when none."""
    if start == 0 and text.startswith(label):
        return 0
    i = text.find("\n" + label, max(start - 1, 0))
    return -1 if i == -1 else i + 1


# ----------------------------------------------------------------------------------------------
# one-shot
# ----------------------------------------------------------------------------------------------
def parse_reply(text: str, fmt: ToolFormat | None, reply_prefix: str = "",
                rng: random.Random | None = None) -> ParsedReply:
    """Content and tool calls of a whole reply. `reply_prefix`: what the prompt already wrote of the
    reply (`ToolPrompt.reply_prefix`); `rng`: call ids (as the stream given the same rng)."""
    if fmt is None:
        return ParsedReply(text or None)
    if fmt is ToolFormat.REACT:
        content, call = react_reply(reply_prefix + text)
        calls = [] if call is None else [call]
    else:
        content, calls = _hermes_reply(text)
    return ParsedReply(content or None, tuple(ToolCall(new_call_id(rng), n, a) for n, a in calls))


def _hermes_reply(text: str) -> tuple[str, list[tuple[str, str]]]:
    pieces: list[str | tuple[str, str]] = []  # text outside valid calls, and calls
    pos = 0
    while (start := text.find(OPEN, pos)) != -1:
        end = text.find(CLOSE, start + len(OPEN))
        stop = len(text) if end == -1 else end + len(CLOSE)
        call = hermes_call(text[start + len(OPEN):len(text) if end == -1 else end])
        pieces += [text[pos:start], call or text[start:stop]]
        pos = stop
    pieces.append(text[pos:])
    merged: list[str | tuple[str, str]] = []
    for piece in pieces:  # a malformed block is text: join it with its neighbours
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    content = []
    for i, piece in enumerate(merged):
        if isinstance(piece, str):
            piece = piece.lstrip() if i > 0 else piece
            content.append(piece.rstrip() if i + 1 < len(merged) else piece)
    return "".join(content), [p for p in merged if isinstance(p, tuple)]


def react_reply(text: str) -> tuple[str, tuple[str, str] | None]:
    """(content, call or None) of a whole ReAct reply (reply prefix included)."""
    text = text.lstrip()
    if not text.startswith(REACT_LABELS):
        action = _find_label(text, ACTION, 1)
        call = react_call(text[action:]) if action != -1 else None
        return (text[:action - 1], call) if call else (text, None)
    action, answer = _find_label(text, ACTION), _find_label(text, FINAL_ANSWER)
    if action != -1 and (answer == -1 or action < answer):
        call = react_call(text[action:])
        return (_thought(text[:action]), call) if call else (_thought(text), None)
    if answer != -1:
        return text[answer + len(FINAL_ANSWER):].lstrip(), None
    return _thought(text), None


def _thought(text: str) -> str:
    text = text.strip()
    return text[len(THOUGHT):].strip() if text.startswith(THOUGHT) else text


def react_sure_content(text: str) -> str:
    """The part of a ReAct reply's content that no continuation of `text` can change."""
    text = text.lstrip()
    if any(label.startswith(text) for label in REACT_LABELS):
        return ""  # empty, or a label still being written
    if text.startswith(REACT_LABELS):
        action, answer = _find_label(text, ACTION), _find_label(text, FINAL_ANSWER)
        if answer == -1 or (action != -1 and action < answer):
            return ""
        return text[answer + len(FINAL_ANSWER):].lstrip()
    action = _find_label(text, ACTION, 1)
    if action != -1:
        return text[:action - 1]
    return text[:hold_from(text, "\n" + ACTION, strip=False)]


def hold_from(text: str, tag: str, strip: bool) -> int:
    """Where to stop sending `text`: before a suffix that may begin `tag` (and the whitespace before it)."""
    cut = len(text)
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            cut -= n
            break
    return len(text[:cut].rstrip()) if strip else cut
