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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from ..errors import CheckpointError, InvalidRequestError
from .messages import FIELD, ChatMessage
from .tokenizer import QwenTiktokenTokenizer, Tokenizer, special_surface_forms

DEFAULT_SYSTEM = "You are a helpful assistant."
T = TypeVar("T")
DEFAULT_MAX_WINDOW_SIZE = 6144

# ChatML, as Qwen1.5+ templates write it: used when a checkpoint ships no chat_template.
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


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
                       max_prompt_len: int | None = None, prefill: str = "") -> list[int]:
    """Prompt ids exactly as the original Qwen `make_context(chat_format="chatml")` builds them.

    The system prompt is the first message when it is a system message, else `default_system`.
    History turns are added newest first while system + history stays below `max_window_size`
    tokens (and, ours, the whole prompt within `max_prompt_len`); the first turn that does not fit
    and all older ones are dropped. User text never produces special tokens. `prefill`: text the
    assistant's reply already starts with (the original openai_api.py's text completion of an open
    assistant turn, as its ReAct prompts use after an observation).
    """
    conv = Conversation.from_messages(messages, default_system)
    t = _ChatMLTokens.of(tokenizer)
    system_tokens = t.turn(tokenizer, "system", conv.system)
    tail = t.nl + t.turn(tokenizer, "user", conv.query) + t.nl + t.im_start + tokenizer.encode("assistant") + t.nl
    tail += tokenizer.encode(prefill) if prefill else []
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

    def render(self, messages: Sequence[Mapping[str, Any]], **variables: Any) -> str:
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


@dataclass(frozen=True)
class RenderedPrompt:
    """A chat rendered by a jinja template: the text (as transformers' `apply_chat_template(...,
    tokenize=False)` gives it) and its prompt ids (special tokens only where the template put them)."""

    text: str
    ids: tuple[int, ...]


def render_template_messages(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]],
                             template: ChatTemplate | None = None, default_system: str = DEFAULT_SYSTEM,
                             prefill: str = "", **variables: Any) -> RenderedPrompt:
    """Render message objects (any keys the template reads: `tool_calls`, `tool_call_id`, ...) and
    extra template variables (`tools`) with `add_generation_prompt=True`, then append `prefill`,
    text the assistant's reply starts with.

    Every string inside the messages and variables has its special-token text swapped for
    placeholders while the template renders and is encoded as plain text afterwards.
    """
    template = template or chat_template_for(tokenizer)
    specials = special_surface_forms(tokenizer)
    texts = [*_strings((messages, variables, prefill)), template.source]
    guard = _PlaceholderGuard.for_texts(specials, texts)
    rendered = template.render([guard.hide_all(m) for m in messages], default_system=default_system,
                               **{**tokenizer.template_vars, **guard.hide_all(variables)})
    ids = _encode_rendered(tokenizer, rendered, specials, guard) + (tokenizer.encode(prefill) if prefill else [])
    return RenderedPrompt(guard.restore(rendered) + prefill, tuple(ids))


def _strings(value: Any) -> list[str]:
    """Every string inside nested lists, tuples and mappings (keys included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def render_hf_template(tokenizer: Tokenizer, messages: Sequence[ChatMessage],
                       template: ChatTemplate | None = None,
                       default_system: str = DEFAULT_SYSTEM) -> list[int]:
    """Prompt ids from a jinja chat template (default: `chat_template_for(tokenizer)`).

    Special tokens come only from the template: special-token text inside message contents is
    swapped for placeholders before rendering and encoded as plain text afterwards. The result
    equals tokenizing the rendered text the way transformers' `apply_chat_template` does whenever
    contents hold no special-token text.
    """
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    return list(render_template_messages(tokenizer, dicts, template, default_system).ids)


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

    def hide_all(self, value: Any) -> Any:
        """`hide` applied to every string value inside nested lists and mappings (keys stay)."""
        if isinstance(value, str):
            return self.hide(value)
        if isinstance(value, Mapping):
            return {k: self.hide_all(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.hide_all(v) for v in value]
        return value

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
    if is_original_qwen(tokenizer, template):
        return render_qwen_chatml(tokenizer, messages, default_system, max_window_size, max_prompt_len)
    messages = list(messages)
    return list(fit_to_window([m.role for m in messages], max_prompt_len, lambda keep: render_hf_template(
        tokenizer, [messages[i] for i in keep], template, default_system)))


def is_original_qwen(tokenizer: Tokenizer, template: ChatTemplate | None = None) -> bool:
    """Whether prompts follow the original Qwen's make_context (qwen.tiktoken and no jinja template)."""
    return isinstance(tokenizer, QwenTiktokenTokenizer) and template is None and tokenizer.chat_template is None


def fit_to_window(roles: Sequence[str], window: int | None, render: Callable[[Sequence[int]], T],
                  size: Callable[[T], int] = len) -> T:
    """`render(kept message indices)` of the newest messages whose prompt fits `window` tokens
    (`size(prompt)`: its length in tokens).

    Leading system messages stay, and the rest starts at a user message (templates may require
    user/assistant turns in order, and tool results must follow their call); the last such start is
    the floor. Fewer messages render shorter, so the cut is found by bisection over the starts."""
    everything = range(len(roles))
    ids = render(everything)
    if window is None or size(ids) <= window:
        return ids
    head = 0
    while head < len(roles) - 1 and roles[head] == "system":
        head += 1
    starts = [i for i in range(head + 1, len(roles)) if roles[i] == "user"]
    if not starts:
        return ids

    def from_start(start: int) -> T:
        return render([*range(head), *range(start, len(roles))])

    lo, hi = 0, len(starts) - 1  # find the earliest start whose prompt fits; the last one is the floor
    best = from_start(starts[hi])
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = from_start(starts[mid])
        if size(candidate) <= window:
            best, hi = candidate, mid
        else:
            lo = mid + 1
    return best
