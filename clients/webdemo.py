"""A gradio web demo of the served model: streaming multi-turn chat through the OpenAI-compatible API.

    make serve && make webdemo          # then open http://127.0.0.1:7860
    python -m clients.webdemo --base-url http://127.0.0.1:9000/v1 --port 7860 [--api-key KEY] [--host 0.0.0.0]

It talks to ``python -m qwen_triton.openai_api`` (``make serve`` starts it on port 9000) with the official
``openai`` SDK's async client, so every browser tab's reply joins the engine's inflight batch.  The page
has a chat (the conversation so far is sent with each turn, after the system prompt), a system prompt box,
sampling controls (temperature, top_p, max_tokens, seed), a Stop button and Clear history.  Stop cancels
the reply's task; its HTTP stream closes and the service cancels the engine request (the partial reply
stays in the chat and in the history).  Clear history also stops a reply in flight.

The page is built by :func:`build_demo` from a :class:`WebDemoConfig` (``webdemo_chat.py`` holds the
conversation logic); nothing lives at module level.  It listens on 127.0.0.1 unless told otherwise (it has
no login of its own).  ``--base-url`` and ``--api-key`` default to $OPENAI_BASE_URL and $OPENAI_API_KEY
(else $QWEN_TRITON_API_KEY, the service's own); the port to $WEBDEMO_PORT, else 7860.  Needs the ``demo``
extra (``pip install -e '.[demo]'``: gradio and openai).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .openai_transport import API_KEY_ENV, BASE_URL_ENV, SERVICE_KEY_ENV, default_api_key, default_base_url
from .webdemo_chat import ChatBackend, WebDemoConfig, make_respond

PORT_ENV = "WEBDEMO_PORT"
# the page's element ids: stable names for people's CSS and for the browser test
IDS = MappingProxyType({
    "chat": "chatbot", "input": "user-input", "send": "send", "stop": "stop", "clear": "clear",
    "system": "system-prompt", "temperature": "temperature", "top_p": "top-p", "max_tokens": "max-tokens",
    "seed": "seed", "status": "status"})
# system fonts only: the default theme's web fonts would be fetched from the internet by every browser
FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
MONO_FONTS = ("ui-monospace", "Consolas", "monospace")


@dataclass(frozen=True)
class Page:
    """The page's components (gradio objects), as the event wiring needs them."""

    chatbot: Any
    box: Any
    send: Any
    stop: Any
    clear: Any
    system: Any
    controls: tuple[Any, ...]  # temperature, top_p, max_tokens, seed: make_respond's order
    status: Any


def _layout(gr, config: WebDemoConfig) -> Page:
    gr.Markdown(f"# {config.title}\nStreaming chat with the model served by Triton, through the "
                f"OpenAI-compatible API at `{config.base_url}`.")
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(elem_id=IDS["chat"], label="Chat", height="62vh", min_height=320,
                                 feedback_options=None, buttons=["copy"])
            with gr.Row():
                box = gr.Textbox(elem_id=IDS["input"], show_label=False, placeholder="Ask something, then Enter",
                                 scale=6, autofocus=True)
                send = gr.Button("Send", elem_id=IDS["send"], variant="primary", scale=1, min_width=80)
                stop = gr.Button("Stop", elem_id=IDS["stop"], variant="stop", scale=1, min_width=80,
                                 interactive=False)
            with gr.Row():
                clear = gr.Button("Clear history", elem_id=IDS["clear"], size="sm")
            status = gr.Markdown(elem_id=IDS["status"])
        with gr.Column(scale=2):
            system = gr.Textbox(label="System prompt", value=config.system_prompt, lines=3,
                                elem_id=IDS["system"])
            controls = (
                gr.Slider(0.0, 2.0, value=config.temperature, step=0.05, label="temperature (0: greedy)",
                          elem_id=IDS["temperature"]),
                gr.Slider(0.0, 1.0, value=config.top_p, step=0.01, label="top_p", elem_id=IDS["top_p"]),
                gr.Slider(1, config.max_tokens_limit, value=config.max_tokens, step=1, label="max_tokens",
                          elem_id=IDS["max_tokens"]),
                gr.Textbox(value="" if config.seed is None else str(config.seed), label="seed",
                           placeholder="empty: a fresh draw each reply", elem_id=IDS["seed"]),
            )
    return Page(chatbot, box, send, stop, clear, system, controls, status)


def _wire(gr, page: Page, backend: ChatBackend) -> None:
    """Send (button or Enter): the question joins the chat at once, then the reply streams in; Stop and
    Clear history cancel a reply in flight.  While a reply streams, Send is off and Stop on."""

    def ask(text: str, history: list) -> tuple:
        if not text or not text.strip():
            return gr.update(), history, gr.update(), gr.update()
        history = [*history, {"role": "user", "content": text}]
        return "", history, gr.update(interactive=False), gr.update(interactive=True)

    def idle() -> tuple:
        return gr.update(interactive=True), gr.update(interactive=False)

    buttons = [page.send, page.stop]
    replies = []
    for trigger in (page.box.submit, page.send.click):
        reply = trigger(ask, [page.box, page.chatbot], [page.box, page.chatbot, *buttons], queue=False).then(
            make_respond(backend), [page.chatbot, page.system, *page.controls], [page.chatbot, page.status],
            show_progress="hidden")
        reply.then(idle, None, buttons, queue=False)
        replies.append(reply)
    page.stop.click(lambda: (*idle(), "*stopped*"), None, [*buttons, page.status], queue=False, cancels=replies)
    page.clear.click(lambda: ([], "", *idle()), None, [page.chatbot, page.status, *buttons], queue=False,
                     cancels=replies)
    page.chatbot.clear(lambda: ("", *idle()), None, [page.status, *buttons], queue=False, cancels=replies)


def build_demo(config: WebDemoConfig):
    """The demo's ``gr.Blocks`` for `config` (not launched; queued for `config.concurrency` replies)."""
    import gradio as gr

    with gr.Blocks(title=config.title, analytics_enabled=False) as demo:
        _wire(gr, _layout(gr, config), ChatBackend(config))
    return demo.queue(default_concurrency_limit=config.concurrency)


def launch(config: WebDemoConfig, block: bool = True):
    """Build and serve the demo on `config.host`:`config.port` (`block=False`: return once listening)."""
    import gradio as gr

    theme = gr.themes.Soft(font=FONTS, font_mono=MONO_FONTS)
    return build_demo(config).launch(server_name=config.host, server_port=config.port, share=False,
                                     prevent_thread_lock=not block, show_error=True, theme=theme,
                                     footer_links=[], quiet=True)


def main(argv: list[str] | None = None) -> int:
    """Serve the demo until interrupted."""
    config = config_from_args(parse_args(argv))
    print(f"[webdemo] http://{config.host}:{config.port} -> the OpenAI API at {config.base_url}", flush=True)
    launch(config)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clients.webdemo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = WebDemoConfig()
    p.add_argument("--base-url", default=default_base_url(),
                   help=f"the OpenAI API's base URL (default ${BASE_URL_ENV}, else {d.base_url})")
    p.add_argument("--api-key", default=default_api_key(),
                   help=f"the OpenAI API's key (default ${API_KEY_ENV}, else ${SERVICE_KEY_ENV}; none needed "
                        "while the API has none)")
    p.add_argument("--model", help="the served model's name (default: the first the API lists)")
    p.add_argument("--host", default=d.host, help="address to listen on (0.0.0.0: other machines too)")
    p.add_argument("--port", type=int, default=int(os.environ.get(PORT_ENV) or d.port))
    p.add_argument("--title", default=d.title)
    p.add_argument("--system", default=d.system_prompt, help="the system prompt box's starting text")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--seed", type=int, default=None, help="the seed box's starting value (default: empty)")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds one reply may take")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="replies streamed at once")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> WebDemoConfig:
    return WebDemoConfig(base_url=args.base_url, api_key=args.api_key, model=args.model, host=args.host,
                         port=args.port, title=args.title, system_prompt=args.system,
                         temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                         max_tokens_limit=max(args.max_tokens, WebDemoConfig.max_tokens_limit), seed=args.seed,
                         timeout_s=args.timeout, concurrency=args.concurrency)


if __name__ == "__main__":
    sys.exit(main())
