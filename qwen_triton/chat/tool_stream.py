"""Function calling, the streamed reply: text deltas in, OpenAI-shaped content and tool call deltas
out. Whatever the split of the text into deltas, the deltas add up to `parse_reply` of the whole
text (`merge_deltas`); the rules are in `tool_parse.py`.
"""
from __future__ import annotations

import random
from collections.abc import Iterable

from .tool_parse import (
    CLOSE,
    OPEN,
    ParsedReply,
    StreamDelta,
    ToolCallDelta,
    hermes_call,
    hold_from,
    react_reply,
    react_sure_content,
)
from .tools import ToolCall, ToolFormat, new_call_id


class ToolCallStream:
    """Streaming parser of one reply. `feed(text)` and then `finish()` return the deltas to send,
    in order: content as soon as it is sure, each call once its block has ended."""

    def __init__(self, fmt: ToolFormat | None, reply_prefix: str = "", rng: random.Random | None = None):
        self._fmt = fmt
        self._rng = rng
        self._calls = 0
        self._hermes = _HermesState() if fmt is ToolFormat.HERMES else None
        self._text = reply_prefix if fmt is ToolFormat.REACT else ""  # the ReAct reply so far
        self._sent = ""  # ReAct content sent so far

    def feed(self, text: str) -> list[StreamDelta]:
        """Deltas for the next piece of generated text."""
        out: list[StreamDelta] = []
        if self._fmt is None:
            self._content(out, text)
        elif self._hermes is not None:
            self._hermes.pending += text
            self._drain_hermes(out, final=False)
        else:
            self._text += text
            self._content(out, react_sure_content(self._text)[len(self._sent):])
        return out

    def finish(self) -> list[StreamDelta]:
        """Deltas for what was held back, once the reply has ended."""
        out: list[StreamDelta] = []
        if self._hermes is not None:
            self._drain_hermes(out, final=True)
        elif self._fmt is ToolFormat.REACT:
            content, call = react_reply(self._text)
            self._content(out, content[len(self._sent):])  # what was sent is a prefix of `content`
            if call is not None:
                self._call(out, *call)
        return out

    def _content(self, out: list[StreamDelta], text: str) -> None:
        if not text:
            return
        if self._fmt is ToolFormat.REACT:
            self._sent += text
        if out and out[-1].tool_call is None:
            out[-1] = StreamDelta(out[-1].content + text)
        else:
            out.append(StreamDelta(text))

    def _call(self, out: list[StreamDelta], name: str, arguments: str) -> None:
        index, self._calls = self._calls, self._calls + 1
        out.append(StreamDelta(tool_call=ToolCallDelta(index, new_call_id(self._rng), name, "")))
        out.append(StreamDelta(tool_call=ToolCallDelta(index, arguments=arguments)))

    def _drain_hermes(self, out: list[StreamDelta], final: bool) -> None:
        state = self._hermes
        assert state is not None
        while True:
            if state.in_call:
                end = state.pending.find(CLOSE)
                if end == -1 and not final:
                    return
                end = len(state.pending) if end == -1 else end
                body, rest = state.pending[:end], state.pending[end + len(CLOSE):]
                closed = state.pending[end:].startswith(CLOSE)
                call = hermes_call(body)
                if call is not None:
                    self._call(out, *call)
                else:  # not a call: the block is content as written, and so is the whitespace before it
                    self._content(out, state.held_ws + OPEN + body + (CLOSE if closed else ""))
                state.in_call, state.after_call, state.held_ws, state.pending = False, call is not None, "", rest
                continue
            if state.after_call:  # whitespace after a call is dropped
                state.pending = state.pending.lstrip()
                if not state.pending:
                    return
                state.after_call = False
            start = state.pending.find(OPEN)
            if start != -1:
                before = state.pending[:start]
                self._content(out, before.rstrip())
                state.held_ws = before[len(before.rstrip()):]  # dropped if a call follows
                state.pending, state.in_call = state.pending[start + len(OPEN):], True
                continue
            sure = len(state.pending) if final else hold_from(state.pending, OPEN, strip=True)
            self._content(out, state.pending[:sure])
            state.pending = state.pending[sure:]
            return


class _HermesState:
    """Where a Hermes stream is: text not yet resolved, inside a `<tool_call>` block or not."""

    def __init__(self) -> None:
        self.pending = ""         # text received and not yet sent or resolved
        self.in_call = False      # `pending` is the body of an open <tool_call> block
        self.held_ws = ""         # whitespace before the open block: dropped if it is a call
        self.after_call = False   # whitespace that starts the next text is dropped


def merge_deltas(deltas: Iterable[StreamDelta]) -> ParsedReply:
    """The reply that streamed deltas add up to (what a client's accumulator builds)."""
    content: list[str] = []
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        call = delta.tool_call
        if call is None:
            content.append(delta.content)
        elif call.id is not None:
            calls[call.index] = [call.id, call.name or "", call.arguments]
        else:
            calls[call.index][2] += call.arguments
    text = "".join(content)
    return ParsedReply(text or None, tuple(ToolCall(*calls[i]) for i in sorted(calls)))
