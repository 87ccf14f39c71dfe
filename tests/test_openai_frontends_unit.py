"""The clients of the OpenAI-compatible API without a server: the web demo's conversation logic and page,
the terminal clients' --api openai flags and request mapping, and what each does when the API is not there.
(Against the served stack: tests/test_openai_frontends.py.)"""
from __future__ import annotations

import asyncio

import pytest

from clients import cli
from clients.base import ClientError
from clients.openai_transport import SERVICE_KEY_ENV, OpenAIClient, default_api_key, openai_params
from clients.request import GenerateRequest
from clients.webdemo_chat import ChatBackend, Sampling, WebDemoConfig, chat_messages, make_respond, parse_seed
from qwen_triton.runtime.process import free_port


def test_chat_messages_take_gradios_history_shapes_as_text():
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                "metadata": None, "options": None},
               {"role": "assistant", "content": "Hello!"},
               {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/x.png"}}]}]
    assert chat_messages("Be brief.", history) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": ""}]
    assert chat_messages("  ", history[:1]) == [{"role": "user", "content": "Hi there"}]  # no empty system


def test_the_seed_box_is_empty_or_a_whole_number():
    assert parse_seed("") is None and parse_seed(None) is None and parse_seed(" 42 ") == 42
    with pytest.raises(ValueError, match="seed must be a whole number"):
        parse_seed("4.5")
    assert Sampling(0.0, 0.8, 64.0, None).params() == {"temperature": 0.0, "top_p": 0.8, "max_tokens": 64}
    assert Sampling(0.7, 1.0, 8, 7).params()["seed"] == 7


def test_a_turn_against_an_absent_api_says_so_and_keeps_the_question():
    respond = make_respond(ChatBackend(WebDemoConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m",
                                                     timeout_s=10)))
    history = [{"role": "user", "content": "Hi"}]
    updates = asyncio.run(_collect(respond(history, "sys", 0.0, 1.0, 8, "")))
    assert updates == [(history, "**error:** Connection error.")]
    bad_seed = asyncio.run(_collect(respond(history, "sys", 0.0, 1.0, 8, "x")))
    assert bad_seed[0][1].startswith("**error:** seed must be a whole number")


async def _collect(gen):
    return [update async for update in gen]


def test_the_page_has_its_controls():
    gr = pytest.importorskip("gradio")
    from clients.webdemo import IDS, build_demo

    demo = build_demo(WebDemoConfig(base_url="http://127.0.0.1:1/v1"))
    assert isinstance(demo, gr.Blocks)
    ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    assert set(IDS.values()) <= ids


def test_openai_params_keep_the_apis_fields_and_refuse_the_others():
    req = GenerateRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=9, temperature=0.5, seed=3,
                          stop=["\n\n"], stream=True)
    assert openai_params(req) == {"max_tokens": 9, "temperature": 0.5, "seed": 3, "stop": ["\n\n"]}
    for field, value in (("top_k", 5), ("repetition_penalty", 1.1), ("min_tokens", 2), ("bad_words", ["x"])):
        with pytest.raises(ClientError, match=f"{field} is not part of the OpenAI API"):
            openai_params(GenerateRequest(text="Hi", **{field: value}))


def test_the_clients_refuse_flags_of_the_other_api(capsys):
    for argv, message in ((["--api", "openai", "--top-k", "3"], "top_k is not part of the OpenAI API"),
                          (["--api", "openai", "--url", "localhost:8001"], "--url and --protocol are Triton's"),
                          (["--base-url", "http://x/v1"], "add --api openai")):
        with pytest.raises(SystemExit) as exit_:
            cli.parse_args(argv + ["--text", "Hi"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_an_absent_api_is_a_client_error():
    client = OpenAIClient(f"http://127.0.0.1:{free_port()}/v1", model="m", timeout=10)
    with pytest.raises(ClientError, match="cannot reach the OpenAI API"):
        client.stream(GenerateRequest(text="Hi", stream=True))


def test_the_service_key_variable_is_the_services(monkeypatch):
    from qwen_triton.openai_api.config import API_KEY_ENV

    assert SERVICE_KEY_ENV == API_KEY_ENV
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv(API_KEY_ENV, "k1")
    assert default_api_key() == "k1"
    monkeypatch.setenv("OPENAI_API_KEY", "k2")
    assert default_api_key() == "k2"
