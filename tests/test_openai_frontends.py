"""The clients of the OpenAI-compatible API against the real stack: the real default model
(Qwen2.5-Coder-0.5B-Instruct) served by the supervisor with the API beside Triton, as `make serve` runs it.

* the gradio web demo (`python -m clients.webdemo`, as `make webdemo` starts it), driven in headless
  Chromium (Debian's `chromium`, through Playwright): a question streams into the chat, the next turn
  sends the history, Stop ends the reply and its engine request, Clear history starts afresh;
* the terminal chat and CLI (`--api openai`): streamed replies equal the API's own, multi-turn history,
  a cancelled stream stops the engine.

One stack for the module; greedy replies, kept short (the CPU decodes a few tokens a second).  Without
Chromium the browser tests skip (under CI they fail: .ci/run installs it).  WEBDEMO_SCREENSHOT=path saves
the screenshot of the demo answering there too (docs/webdemo.png is made so)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import openai
import pytest
from served import needs_triton

from clients.chat import Chat
from clients.openai_transport import OpenAIClient
from clients.triton_client import GenerateRequest
from qwen_triton.runtime.process import free_port, tail
from qwen_triton.wire import http_get

pytestmark = [pytest.mark.server, pytest.mark.slow, needs_triton]
ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful assistant."  # the demo's default system prompt
FIRST = "Write a Python one-liner that reverses a string s."
SECOND = "Now do the same for a list called items."
LONG = "Write a long story about a dragon who learns to code."
REPLY_TOKENS = 96
USAGE = re.compile(r"(\d+) prompt tokens · (\d+) generated")


@pytest.fixture(scope="module")
def stack(openai_served):
    return openai_served  # one stack for this file and test_openai_api.py (conftest)


def sdk(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="none", max_retries=0, timeout=300)


def sdk_reply(stack, messages, max_tokens: int, **params):
    """The API's own greedy reply (not streamed): what every client here must show."""
    return sdk(stack).chat.completions.create(model=stack.model, messages=messages, max_tokens=max_tokens,
                                              temperature=0, **params)


def wait_until(condition, what: str, timeout_s: float = 240.0, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(every_s)
    return value


# -------------------------------------------------------------------------------------- the web demo
def chromium() -> str:
    """Debian's chromium (or $CHROMIUM); skips without it, fails under CI (which installs it)."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "no chromium: `apt-get install -y chromium` (Debian's), or CHROMIUM=/path/to/chrome"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def demo_url(stack, tmp_path_factory):
    """`python -m clients.webdemo` for the stack's API, as `make webdemo` runs it; its URL once it answers."""
    port, log = free_port(), tmp_path_factory.mktemp("webdemo") / "webdemo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "clients.webdemo", "--base-url", stack.base_url,
                                 "--port", str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: proc.poll() is not None or http_get(url, 1.0)[0] == 200, "the web demo", 120, 0.3)
        assert proc.poll() is None, tail(log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(demo_url):
    """One browser tab on the demo, kept for the module's turns (the conversation goes on across tests)."""
    path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 1000})
            tab.set_default_timeout(60_000)
            tab.goto(demo_url, wait_until="domcontentloaded")
            set_number(tab, "temperature", 0)
            set_number(tab, "max-tokens", REPLY_TOKENS)
            yield tab
        finally:
            browser.close()


def set_number(tab, elem_id: str, value) -> None:
    box = tab.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def bot_texts(tab) -> list[str]:
    return tab.locator("[data-testid=bot]").all_inner_texts()


def status(tab) -> str:
    return tab.locator("#status").inner_text()


def ask(tab, question: str) -> list[int]:
    """Type a question, press Enter; the lengths of the reply seen while it streamed, until Send is back."""
    turns = len(bot_texts(tab))
    tab.locator("#user-input textarea").fill(question)
    tab.locator("#user-input textarea").press("Enter")
    wait_until(lambda: tab.locator("#stop").is_enabled() or len(bot_texts(tab)) > turns, "the reply to start")
    seen = []
    while not tab.locator("#send").is_enabled():
        texts = bot_texts(tab)
        if len(texts) > turns and (not seen or len(texts[-1]) != seen[-1]):
            seen.append(len(texts[-1]))
        time.sleep(0.1)
    return seen


def usage_shown(tab) -> tuple[int, int]:
    """(prompt tokens, generated tokens) from the status line under the chat."""
    found = USAGE.search(status(tab))
    assert found, status(tab)
    return int(found[1]), int(found[2])


@pytest.fixture(scope="module")
def first_reply(stack):
    """The API's reply to the demo's first question, as the demo asks it (its default system prompt)."""
    return sdk_reply(stack, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": FIRST}],
                     REPLY_TOKENS, top_p=0.8)


def test_a_question_streams_into_the_chat(page, stack, first_reply):
    seen = ask(page, FIRST)
    assert len(seen) > 3  # it grew piece by piece (markdown may render a piece shorter: lengths only)
    expected = first_reply
    assert "[::-1]" in bot_texts(page)[-1] and "[::-1]" in expected.choices[0].message.content
    assert usage_shown(page) == (expected.usage.prompt_tokens, expected.usage.completion_tokens)
    assert page.locator("#stop").is_disabled() and page.locator("#user-input textarea").input_value() == ""


def test_the_next_turn_sends_the_history(page, stack, first_reply, tmp_path):
    ask(page, SECOND)
    first = first_reply.choices[0].message.content
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": FIRST},
               {"role": "assistant", "content": first}, {"role": "user", "content": SECOND}]
    expected = sdk_reply(stack, history, REPLY_TOKENS, top_p=0.8)
    # the same prompt tokens: the demo sent the system prompt and the first turn, reply verbatim
    assert usage_shown(page) == (expected.usage.prompt_tokens, expected.usage.completion_tokens)
    assert "items" in bot_texts(page)[-1] and len(bot_texts(page)) == 2
    page.set_viewport_size({"width": 1280, "height": 1180})  # the chat grows with the window: both turns show
    page.screenshot(path=str(tmp_path / "webdemo.png"))
    page.set_viewport_size({"width": 1280, "height": 1000})
    if os.environ.get("WEBDEMO_SCREENSHOT"):
        shutil.copyfile(tmp_path / "webdemo.png", os.environ["WEBDEMO_SCREENSHOT"])


def test_stop_ends_the_reply_and_its_engine_request(page, stack):
    set_number(page, "max-tokens", 256)
    before = stack.engine_counters()["generated_tokens"]
    page.locator("#user-input textarea").fill(LONG)
    page.locator("#send").click()
    wait_until(lambda: len(bot_texts(page)) == 3 and len(bot_texts(page)[-1]) > 40, "the story to stream")
    assert page.locator("#stop").is_enabled() and page.locator("#send").is_disabled()
    page.locator("#stop").click()
    wait_until(lambda: page.locator("#send").is_enabled(), "Send to come back")
    assert page.locator("#stop").is_disabled() and "stopped" in status(page)
    wait_until(lambda: stack.active_requests() == 0, "the engine to drop the request")
    generated = stack.engine_counters()["generated_tokens"] - before
    assert 0 < generated < 256  # cancelled, not run to max_tokens
    partial = bot_texts(page)[-1]
    assert len(partial) > 40  # the partial reply stays in the chat
    set_number(page, "max-tokens", 8)
    ask(page, "Thanks!")
    assert bot_texts(page)[2] == partial  # nothing arrived after Stop
    assert stack.engine_counters()["generated_tokens"] - before == generated + usage_shown(page)[1]


def test_clear_history_starts_afresh(page, stack):
    page.locator("#clear").click()
    wait_until(lambda: not bot_texts(page), "the chat to empty")
    ask(page, "Hi")
    expected = sdk_reply(stack, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}], 8,
                         top_p=0.8)
    assert usage_shown(page) == (expected.usage.prompt_tokens, expected.usage.completion_tokens)
    assert len(bot_texts(page)) == 1


# --------------------------------------------------------------------------------- the terminal clients
class Recorder(StringIO):
    """stdout that counts its writes: a streamed reply arrives in many."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += bool(s)
        return super().write(s)


def test_the_terminal_chat_streams_multi_turn_replies_through_the_api(stack):
    out, err = Recorder(), StringIO()
    client = OpenAIClient(stack.base_url, timeout=300)
    chat = Chat(client, system=SYSTEM, out=out, err=err, max_tokens=24, temperature=0)
    assert chat.turn("What is the capital of France? Answer in one sentence.")
    first = out.getvalue()
    assert out.writes > 3 and "Paris" in first and err.getvalue() == ""
    assert chat.turn("And of Italy?")
    question = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    expected_first = sdk_reply(stack, question, 24).choices[0].message.content
    expected_second = sdk_reply(stack, question + [{"role": "assistant", "content": expected_first},
                                                   {"role": "user", "content": "And of Italy?"}], 24)
    assert out.getvalue() == f"{expected_first}\n{expected_second.choices[0].message.content}\n"
    assert [m["role"] for m in chat.history] == ["user", "assistant"] * 2
    assert client.model == stack.model  # the one the API lists


def test_the_chat_command_reads_turns_from_a_pipe(stack):
    done = subprocess.run([sys.executable, "-m", "clients.chat", "--api", "openai", "--base-url", stack.base_url,
                           "--system", SYSTEM, "--temperature", "0", "--max-tokens", "24"], cwd=ROOT,
                          input="What is the capital of France? Answer in one sentence.\n/exit\n",
                          capture_output=True, text=True, timeout=300)
    expected = sdk_reply(stack, [{"role": "system", "content": SYSTEM}, {"role": "user", "content":
                                 "What is the capital of France? Answer in one sentence."}], 24)
    assert (done.returncode, done.stdout) == (0, expected.choices[0].message.content + "\n"), done.stderr


def test_the_cli_streams_a_completion_and_reports_the_apis_errors(stack):
    base = [sys.executable, "-m", "clients.cli", "--api", "openai", "--base-url", stack.base_url]
    done = subprocess.run(base + ["--stream", "--text", "def fib(n):", "--max-tokens", "16", "--temperature", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    expected = sdk(stack).completions.create(model=stack.model, prompt="def fib(n):", max_tokens=16, temperature=0)
    assert (done.returncode, done.stdout) == (0, expected.choices[0].text + "\n"), done.stderr
    done = subprocess.run(base + ["--model", "nope", "--text", "hi"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "nope" in done.stderr and stack.model in done.stderr


def test_cancelling_a_terminal_stream_stops_the_engine(stack):
    before = stack.engine_counters()["generated_tokens"]
    stream = OpenAIClient(stack.base_url, timeout=300).stream(GenerateRequest(
        messages=[{"role": "user", "content": LONG}], max_tokens=256, temperature=0, stream=True))
    chunks = [next(stream) for _ in range(3)]
    stream.cancel()
    assert list(stream) == [] and stream.cancelled and stream.text == "".join(chunks)
    wait_until(lambda: stack.active_requests() == 0, "the engine to drop the request")
    assert 0 < stack.engine_counters()["generated_tokens"] - before < 256
