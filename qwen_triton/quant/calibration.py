"""The calibration set of the quantized build (calibration.jsonl): the conversations the model is run over to
gather activation statistics (SmoothQuant, per-tensor activation scales, KV-cache scales, GPTQ/AWQ).

48 items, about 60% English and 40% Chinese, of four kinds: `prose` (a paragraph to work on), `chat` (a
system prompt and several turns), `code` (Python, C, SQL, JavaScript and shell in questions and answers) and
`qa`. Chats, code and QA include the assistant's replies, so the statistics also cover text in the model's own
style of output. The set is written apart from the evaluation data (tools/data/): no shared topics, and no
12-word run in common (tests/test_calibration.py checks the latter).

The file orders the items so that every prefix keeps roughly the whole set's mix of languages and kinds:
`limit` takes the first items.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from ..chat import Tokenizer, parse_messages, render_prompt
from ..chat.messages import content_text
from ..chat.template import is_original_qwen, render_template_messages

CALIBRATION_FILE = "calibration.jsonl"
LANGS = ("en", "zh")
KINDS = ("prose", "chat", "code", "qa")


def load_calibration(limit: int | None = None) -> list[dict]:
    """The calibration items in file order, the first `limit` of them when given.

    Each item: {"id", "lang": "en" | "zh", "kind": "prose" | "chat" | "code" | "qa", "messages": [{"role",
    "content"}, ...]}. Read through importlib.resources, so it works from an installed package too."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    text = resources.files(__package__).joinpath(CALIBRATION_FILE).read_text(encoding="utf-8")
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
    for item in items:
        if item.get("lang") not in LANGS or item.get("kind") not in KINDS or not item.get("messages"):
            raise ValueError(f"{CALIBRATION_FILE}: malformed item {item.get('id')!r}")
    return items if limit is None else items[:limit]


def render_conversation(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Token ids of a whole conversation, laid out as the checkpoint's chat format lays it out.

    A conversation that ends with the user is rendered as the server renders a prompt (`render_prompt`, with
    the assistant's opening). One that ends with the assistant is rendered through that closing reply:
    original Qwen checkpoints (make_context, which has no closed final turn) get the prompt of the messages
    before the reply, then the reply and <|im_end|>, exactly the ChatML of a history turn; every other
    checkpoint gets its jinja template with `add_generation_prompt=False`."""
    messages = list(messages)
    if not messages or messages[-1].get("role") != "assistant":
        return render_prompt(tokenizer, parse_messages(messages))  # parse_messages rejects a bad last role
    head = parse_messages(messages[:-1])  # the messages up to the reply, which must end with the user
    reply = content_text(len(messages) - 1, messages[-1].get("content"))
    if is_original_qwen(tokenizer):
        return render_prompt(tokenizer, head) + tokenizer.encode(reply) + [tokenizer.im_end_id]
    dicts = [{"role": m.role, "content": m.content} for m in head] + [{"role": "assistant", "content": reply}]
    return list(render_template_messages(tokenizer, dicts, add_generation_prompt=False).ids)


def calibration_token_ids(tokenizer: Tokenizer, limit: int | None = None,
                          max_len: int | None = None) -> list[list[int]]:
    """The first `limit` calibration items (all when None) rendered by `render_conversation`, each cut to its
    first `max_len` tokens when given (a model's context may be shorter than the longest item, ~650 tokens)."""
    sequences = [render_conversation(tokenizer, item["messages"]) for item in load_calibration(limit)]
    return sequences if max_len is None else [ids[:max_len] for ids in sequences]
