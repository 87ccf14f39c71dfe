"""Chat request messages: validation of {"role", "content"} lists into `ChatMessage`s.

The tool-calling form of a message (assistant `tool_calls`, `tool` results) is validated in
`tools.py`, which reuses `content_text` from here.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError

ROLES = ("system", "user", "assistant")
FIELD = "messages"


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat request."""

    role: str
    content: str


def parse_messages(messages: str | bytes | Sequence[Any]) -> list[ChatMessage]:
    """Validate chat messages given as JSON text or as a list of {"role", "content"} objects.

    Content may be a string or a list of OpenAI-style text parts ({"type": "text", "text": ...}).
    Raises InvalidRequestError (field "messages") for malformed JSON, a non-list, an empty list, a
    message without role or content, an unknown role, or a last message not from the user.
    """
    items = _load_json(messages) if isinstance(messages, (str, bytes, bytearray)) else messages
    if not isinstance(items, (list, tuple)):
        raise InvalidRequestError(FIELD, f"must be a JSON list of messages, got {type(items).__name__}")
    if not items:
        raise InvalidRequestError(FIELD, "must hold at least one message")
    parsed = [_parse_message(i, item) for i, item in enumerate(items)]
    if parsed[-1].role != "user":
        raise InvalidRequestError(FIELD, f"the last message must come from the user, not {parsed[-1].role!r}")
    return parsed


def _load_json(text: str | bytes | bytearray) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidRequestError(FIELD, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise InvalidRequestError(FIELD, f"invalid JSON: {exc}") from exc


def _parse_message(index: int, item: Any) -> ChatMessage:
    if isinstance(item, ChatMessage):
        item = {"role": item.role, "content": item.content}
    if not isinstance(item, Mapping):
        raise InvalidRequestError(FIELD, f"message {index} must be an object with role and content")
    if "role" not in item or "content" not in item:
        raise InvalidRequestError(FIELD, f"message {index} needs both 'role' and 'content'")
    role = item["role"]
    if role not in ROLES:
        raise InvalidRequestError(FIELD, f"message {index}: unknown role {role!r} (expected one of {ROLES})")
    return ChatMessage(role, content_text(index, item["content"]))


def content_text(index: int, content: Any) -> str:
    """A message's content: a string, or a list of OpenAI text parts joined (InvalidRequestError else)."""
    if isinstance(content, list) and all(
            isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise InvalidRequestError(FIELD, f"message {index}: content must be a string or a list of text parts")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:  # JSON may escape one ("\ud800"): not text, and HF tokenizers raise TypeError
        raise InvalidRequestError(FIELD, f"message {index}: content holds a lone surrogate") from None
    return content
