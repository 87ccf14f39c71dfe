"""The web demo's conversation logic, without gradio: its settings (:class:`WebDemoConfig`), the OpenAI API
as it uses it (:class:`ChatBackend`, the ``openai`` SDK's async client), gradio's chat history as OpenAI
``messages``, and the streaming handler of one turn (:func:`make_respond`).  The page is ``webdemo.py``."""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from .openai_transport import DEFAULT_BASE_URL

DEFAULT_PORT = 7860
DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class WebDemoConfig:
    """Where the demo listens, which API it talks to, and the controls' starting values."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    model: str | None = None  # None: the first model GET /v1/models lists (asked on the first turn)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    title: str = "Qwen chat"
    system_prompt: str = DEFAULT_SYSTEM
    temperature: float = 0.7
    top_p: float = 0.8
    max_tokens: int = 512
    max_tokens_limit: int = 4096  # the slider's end (the engine refuses what its build does not allow)
    seed: int | None = None
    timeout_s: float = 600.0
    concurrency: int = 16  # replies streamed at once, over all tabs (the engine batches them)


@dataclass(frozen=True)
class Sampling:
    """One turn's sampling controls (seed None: not sent, so each reply draws afresh)."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None

    def params(self) -> dict[str, Any]:
        params = {"temperature": float(self.temperature), "top_p": float(self.top_p),
                  "max_tokens": int(self.max_tokens)}
        if self.seed is not None:
            params["seed"] = int(self.seed)
        return params


def parse_seed(text: Any) -> int | None:
    """The seed box's value: empty is None (each reply draws afresh), else a whole number."""
    text = "" if text is None else str(text).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"seed must be a whole number or empty, not {text!r}") from None


def message_text(content: Any) -> str:
    """A chat message's text, from gradio's shapes: a string, or a list of ``{"type": "text", "text"}``
    parts (gradio 6's normalized messages); other parts (files) carry no text for the model."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    return "".join(message_text(part) for part in content)


def chat_messages(system: str, history: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The OpenAI ``messages`` of a turn: the system prompt (if any), then the chat so far, as text."""
    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    return messages + [{"role": m["role"], "content": message_text(m.get("content"))} for m in history
                       if m.get("role") in ("user", "assistant")]


class ChatBackend:
    """The OpenAI API as the demo uses it: one async SDK client, and the served model's name."""

    def __init__(self, config: WebDemoConfig):
        import openai

        self.config = config
        self._model = config.model
        self._client = openai.AsyncOpenAI(base_url=config.base_url, api_key=config.api_key or "none",
                                          timeout=config.timeout_s, max_retries=0)

    async def model(self) -> str:
        if self._model is None:
            served = (await self._client.models.list()).data
            if not served:
                raise RuntimeError(f"{self.config.base_url}/models lists no model")
            self._model = served[0].id
        return self._model

    async def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> AsyncIterator[str | Any]:
        """The reply's text pieces as they arrive, then its usage (the SDK's ``CompletionUsage``).

        Cancelling the task that iterates closes the HTTP stream (``finally``): the service then cancels
        the engine request."""
        stream = await self._client.chat.completions.create(
            model=await self.model(), messages=messages, stream=True, stream_options={"include_usage": True},
            **sampling.params())
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
                if chunk.usage is not None:
                    yield chunk.usage
        finally:
            await stream.close()


def usage_line(model: str, usage: Any, finish: str | None = None) -> str:
    """The status line under the chat after a reply."""
    line = f"`{model}` · {usage.prompt_tokens} prompt tokens · {usage.completion_tokens} generated"
    return line + (f" · finish: {finish}" if finish else "")


def error_text(exc: Exception) -> str:
    """What the page says about a failed turn: the service's own message where it sent one."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc) or type(exc).__name__


def make_respond(backend: ChatBackend):
    """The streaming event handler: (chat history, system prompt, controls) -> (history, status) updates."""

    async def respond(history, system, temperature, top_p, max_tokens, seed):
        if not history or history[-1].get("role") != "user":
            yield history, ""
            return
        try:
            sampling = Sampling(temperature, top_p, max_tokens, parse_seed(seed))
        except ValueError as exc:
            yield history, f"**error:** {exc}"
            return
        messages = chat_messages(system, history)
        history = [*history, {"role": "assistant", "content": ""}]
        reply, usage = "", None
        try:
            async for piece in backend.stream(messages, sampling):
                if isinstance(piece, str):
                    reply += piece
                    history[-1] = {"role": "assistant", "content": reply}
                    yield history, "*streaming…*"
                else:
                    usage = piece
        except Exception as exc:  # the SDK's errors: shown on the page, the demo keeps serving
            yield (history if reply else history[:-1]), f"**error:** {error_text(exc)}"
            return
        yield history, usage_line(await backend.model(), usage) if usage else ""

    return respond
