"""Chat messages -> prompt token ids.

* `render_qwen_chatml`: the original Qwen `make_context` (qwen_generation_utils.py), token for token:
  role and content are tokenized separately, turns are joined by "\\n" tokens, and the oldest history
  turns are dropped when the prompt would exceed `max_window_size`.
* `render_hf_template`: the checkpoint's jinja `chat_template` (Qwen1.5/2/2.5, LLaMA), rendered in a
  sandbox with `add_generation_prompt=True`; ChatML when the checkpoint has no template.

Both keep special-token text typed by users as plain text: only the template itself can emit
control tokens such as <|im_start|> / <|im_end|>.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import CheckpointError, InvalidRequestError
from .tokenizer import QwenTiktokenTokenizer, Tokenizer, special_surface_forms

ROLES = ("system", "user", "assistant")
DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_MAX_WINDOW_SIZE = 6144
FIELD = "messages"

# ChatML, as Qwen1.5+ templates write it: used when a checkpoint ships no chat_template.
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat request."""

    role: str
    content: str


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------
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
    return ChatMessage(role, _content_text(index, item["content"]))


def _content_text(index: int, content: Any) -> str:
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


# ----------------------------------------------------------------------------------------------
# Original Qwen ChatML (make_context)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conversation:
    """Messages arranged as make_context takes them: system, (query, response) history, query."""

    system: str
    history: tuple[tuple[str, str | None], ...]
    query: str

    @classmethod
    def from_messages(cls, messages: Sequence[ChatMessage], default_system: str) -> Conversation:
        """Arrange validated messages; a system message may only come first."""
        system = default_system
        rest = list(messages)
        if rest and rest[0].role == "system":
            system, rest = rest[0].content, rest[1:]
        if not rest or rest[-1].role != "user":
            raise InvalidRequestError(FIELD, "the last message must come from the user")
        return cls(system, _history_pairs(rest[:-1]), rest[-1].content)


def _history_pairs(messages: Sequence[ChatMessage]) -> tuple[tuple[str, str | None], ...]:
    pairs: list[tuple[str, str | None]] = []
    for i, message in enumerate(messages):
        if message.role == "system":
            raise InvalidRequestError(FIELD, "a system message may only be the first message")
        if message.role == "user":
            pairs.append((message.content, None))
        elif i == 0 or messages[i - 1].role != "user":
            raise InvalidRequestError(FIELD, f"assistant message {i} must follow a user message")
        else:
            pairs[-1] = (pairs[-1][0], message.content)
    return tuple(pairs)


@dataclass(frozen=True)
class _ChatMLTokens:
    im_start: list[int]
    im_end: list[int]
    nl: list[int]

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> _ChatMLTokens:
        if tokenizer.im_start_id is None or tokenizer.im_end_id is None:
            raise CheckpointError("the tokenizer has no <|im_start|> / <|im_end|> tokens for ChatML")
        return cls([tokenizer.im_start_id], [tokenizer.im_end_id], tokenizer.encode("\n"))

    def turn(self, tokenizer: Tokenizer, role: str, content: str) -> list[int]:
        """<|im_start|>role\\ncontent<|im_end|>, role and content tokenized separately."""
        body = tokenizer.encode(role) + self.nl + tokenizer.encode(content)
        return self.im_start + body + self.im_end


def render_qwen_chatml(tokenizer: Tokenizer, messages: Sequence[ChatMessage],
                       default_system: str = DEFAULT_SYSTEM,
                       max_window_size: int = DEFAULT_MAX_WINDOW_SIZE,
                       max_prompt_len: int | None = None) -> list[int]:
    """Prompt ids exactly as the original Qwen `make_context(chat_format="chatml")` builds them.

    The system prompt is the first message when it is a system message, else `default_system`.
    History turns are added newest first while system + history stays below `max_window_size`
    tokens (and, ours, the whole prompt within `max_prompt_len`); the first turn that does not fit
    and all older ones are dropped. User text never produces special tokens.
    """
    conv = Conversation.from_messages(messages, default_system)
    t = _ChatMLTokens.of(tokenizer)
    system_tokens = t.turn(tokenizer, "system", conv.system)
    tail = t.nl + t.turn(tokenizer, "user", conv.query) + t.nl + t.im_start + tokenizer.encode("assistant") + t.nl
    room = max_prompt_len - len(tail) if max_prompt_len is not None else None
    context: list[int] = []
    for query, response in reversed(conv.history):
        turn = t.nl + t.turn(tokenizer, "user", query) + t.nl
        if response is not None:
            turn += t.turn(tokenizer, "assistant", response)
        size = len(system_tokens) + len(turn) + len(context)
        if size >= max_window_size or (room is not None and size > room):
            break
        context = turn + context
    return system_tokens + context + tail


# ----------------------------------------------------------------------------------------------
# HF jinja chat templates
# ----------------------------------------------------------------------------------------------
def _raise_exception(message: str) -> None:
    raise InvalidRequestError(FIELD, f"rejected by the chat template: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A jinja chat template compiled once in a sandboxed environment (as transformers renders it:
    trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `tojson`, `strftime_now`)."""

    def __init__(self, source: str):
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise CheckpointError(f"invalid chat_template: {exc}") from exc

    def render(self, messages: Sequence[Mapping[str, str]], **variables: Any) -> str:
        """Render with `add_generation_prompt=True` unless given otherwise."""
        from jinja2 import TemplateError

        variables.setdefault("add_generation_prompt", True)
        try:
            return self._template.render(messages=list(messages), **variables)
        except TemplateError as exc:
            raise InvalidRequestError(FIELD, f"chat template failed: {exc}") from exc


def chat_template_for(tokenizer: Tokenizer) -> ChatTemplate:
    """The tokenizer's own chat template, or ChatML when it has none."""
    return ChatTemplate(tokenizer.chat_template or CHATML_TEMPLATE)


def render_hf_template(tokenizer: Tokenizer, messages: Sequence[ChatMessage],
                       template: ChatTemplate | None = None,
                       default_system: str = DEFAULT_SYSTEM) -> list[int]:
    """Prompt ids from a jinja chat template (default: `chat_template_for(tokenizer)`).

    Special tokens come only from the template: special-token text inside message contents is
    swapped for placeholders before rendering and encoded as plain text afterwards. The result
    equals tokenizing the rendered text the way transformers' `apply_chat_template` does whenever
    contents hold no special-token text.
    """
    template = template or chat_template_for(tokenizer)
    specials = special_surface_forms(tokenizer)
    guard = _PlaceholderGuard.for_texts(specials, [m.content for m in messages] + [template.source])
    rendered = template.render([{"role": m.role, "content": guard.hide(m.content)} for m in messages],
                               default_system=default_system, **tokenizer.template_vars)
    return _encode_rendered(tokenizer, rendered, specials, guard)


@dataclass(frozen=True)
class _PlaceholderGuard:
    """Stands in for special-token text inside user content while the template renders."""

    specials: tuple[str, ...]
    marker: str

    @classmethod
    def for_texts(cls, specials: Sequence[str], texts: Sequence[str]) -> _PlaceholderGuard:
        """Pick as marker a private-use character that none of `texts` holds."""
        free = (chr(c) for c in range(0xE000, 0xF900) if not any(chr(c) in t for t in texts))
        marker = next(free, None)
        if marker is None:
            raise InvalidRequestError(FIELD, "messages use every private-use character")
        return cls(tuple(specials), marker)

    def hide(self, text: str) -> str:
        if not self.specials or not any(s in text for s in self.specials):
            return text
        pattern = "|".join(re.escape(s) for s in self.specials)
        return re.sub(pattern, lambda m: f"{self.marker}{self.specials.index(m.group())}{self.marker}",
                      text)

    def restore(self, text: str) -> str:
        if self.marker not in text:
            return text
        pattern = f"{self.marker}(\\d+){self.marker}"
        return re.sub(pattern, lambda m: self.specials[int(m.group(1))], text)


def _encode_rendered(tokenizer: Tokenizer, text: str, specials: Sequence[str],
                     guard: _PlaceholderGuard) -> list[int]:
    """Split at the template's special tokens, encode the text in between without special tokens."""
    if not specials:
        return tokenizer.encode(guard.restore(text))
    ids: list[int] = []
    pattern = "(" + "|".join(re.escape(s) for s in specials) + ")"
    for i, piece in enumerate(re.split(pattern, text)):
        if i % 2:
            ids.append(tokenizer.special_tokens[piece])
        elif piece:
            ids.extend(tokenizer.encode(guard.restore(piece)))
    return ids


def render_prompt(tokenizer: Tokenizer, messages: Sequence[ChatMessage],
                  template: ChatTemplate | None = None, default_system: str = DEFAULT_SYSTEM,
                  max_window_size: int = DEFAULT_MAX_WINDOW_SIZE, max_prompt_len: int | None = None) -> list[int]:
    """Prompt ids the way the checkpoint expects: original Qwen checkpoints (qwen.tiktoken, no
    template) get `render_qwen_chatml` (history window `max_window_size`), every other one
    `render_hf_template`. Either way the oldest history is dropped so that the prompt fits
    `max_prompt_len` tokens when it can (the system message and the last user message always stay)."""
    if isinstance(tokenizer, QwenTiktokenTokenizer) and template is None and tokenizer.chat_template is None:
        return render_qwen_chatml(tokenizer, messages, default_system, max_window_size, max_prompt_len)
    if max_prompt_len is None:
        return render_hf_template(tokenizer, messages, template, default_system)
    return _fit_hf_template(tokenizer, list(messages), template, default_system, max_prompt_len)


def _fit_hf_template(tokenizer: Tokenizer, messages: list[ChatMessage], template: ChatTemplate | None,
                     default_system: str, window: int) -> list[int]:
    """render_hf_template of the newest messages that fit `window`: leading system messages stay, and
    the rest starts at a user message (templates may require user/assistant turns in order). Fewer
    messages render shorter, so the cut is found by bisection over the possible starts."""
    ids = render_hf_template(tokenizer, messages, template, default_system)
    if len(ids) <= window:
        return ids
    head = 0
    while head < len(messages) - 1 and messages[head].role == "system":
        head += 1
    starts = [i for i in range(head + 1, len(messages)) if messages[i].role == "user"]
    if not starts:
        return ids
    lo, hi = 0, len(starts) - 1  # find the earliest start whose prompt fits; the last one is the floor
    best = render_hf_template(tokenizer, messages[:head] + messages[starts[hi]:], template, default_system)
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = render_hf_template(tokenizer, messages[:head] + messages[starts[mid]:], template, default_system)
        if len(candidate) <= window:
            best, hi = candidate, mid
        else:
            lo = mid + 1
    return best
