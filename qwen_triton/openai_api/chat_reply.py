"""A chat reply's text -> OpenAI's message (content and `tool_calls`) or its streamed deltas.

With tools offered, the reply is read in the checkpoint's tool format (`qwen_triton.chat`: Qwen2.5's
`<tool_call>` blocks, the original Qwen's ReAct); `ToolCallStream` sends content as soon as no
continuation can make it part of a call, and each call once its block has ended, as OpenAI streams them
(first its id and name, then its arguments). Without tools the text is the content, as it comes. Log
probabilities ride on the chunk sent for the tokens they belong to.
"""
from __future__ import annotations

from collections.abc import Iterator

from ..chat import ToolCallStream, ToolFormat, parse_reply
from ..chat.tool_parse import StreamDelta
from .responses import ChatDelta, ChatMessageOut, ChoiceLogprobs, ToolCallDelta, ToolCallOut


class ChatReply:
    """Shapes one reply. `fmt`: the tool format when tools are offered, else None (plain content);
    `reply_prefix`: what the prompt already wrote of the reply (ReAct's "Thought:")."""

    def __init__(self, fmt: ToolFormat | None, reply_prefix: str = ""):
        self.fmt, self.reply_prefix = fmt, reply_prefix
        self._stream = ToolCallStream(fmt, reply_prefix)
        self.called = False  # a tool call went out (finish_reason "tool_calls")

    def deltas(self, text: str, logprobs: ChoiceLogprobs | None) -> Iterator[tuple[ChatDelta, ChoiceLogprobs | None]]:
        """The deltas to stream for the next piece of text (the logprobs go with the first; with nothing
        to send, an empty content delta carries them)."""
        deltas = self._stream.feed(text)
        if not deltas and logprobs is not None and logprobs.content:
            deltas = [StreamDelta("")]
        for i, delta in enumerate(deltas):
            yield self._delta(delta), logprobs if i == 0 else None

    def finish(self) -> Iterator[ChatDelta]:
        """The deltas held back until the reply ended."""
        for delta in self._stream.finish():
            yield self._delta(delta)

    def _delta(self, delta: StreamDelta) -> ChatDelta:
        if delta.tool_call is None:
            return ChatDelta(content=delta.content)
        self.called = True
        return ChatDelta(tool_calls=[ToolCallDelta.model_validate(delta.tool_call.to_openai())])

    def message(self, text: str) -> ChatMessageOut:
        """The whole reply as the chat completion's message."""
        if self.fmt is None:
            return ChatMessageOut(content=text)
        parsed = parse_reply(text, self.fmt, self.reply_prefix)
        self.called = bool(parsed.tool_calls)
        calls = [ToolCallOut.model_validate(c.to_openai()) for c in parsed.tool_calls] or None
        return ChatMessageOut(content=parsed.content, tool_calls=calls)

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """"tool_calls" when the reply called a tool and ended on its own (not cut by max_tokens)."""
        return "tool_calls" if self.called and engine_reason == "stop" else engine_reason
