"""The soak test's catalogue of malformed requests (``python -m loadtest.soak``): what a client can get
wrong, and what the server must answer.

Every entry says how it is sent (``protocol``: ``http`` = ``POST /v2/models/<model>/generate``, ``sse`` =
``.../generate_stream``, ``grpc`` = a tritonclient gRPC stream), what it sends (a JSON body, raw bytes, or
gRPC inputs as ``(name, triton dtype, value)``) and what must come back: an error (HTTP 4xx; over gRPC an
error response, whose status Triton's stream does not carry) whose message contains one of ``expect``
(case-insensitive), naming the field or the problem.  Never a success, never a 5xx, never a hang.

Entries marked ``dangerous`` are known to bring down Triton 2.51 itself when it parses them (not our
models): the soak leaves them out unless ``--dangerous`` is given, so a run against today's server survives.
The catalogue is plain data (tuples of frozen dataclasses): nothing here sends anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qwen_triton.serving import contract as c

PROTOCOLS = ("http", "sse", "grpc")
DEEP = 200_000  # levels of JSON nesting that crash tritonserver 2.51's HTTP front (rapidjson recursion)


@dataclass(frozen=True)
class Malformed:
    """One malformed request and the error it must get.

    ``body``: for http/sse a dict sent as JSON, or bytes sent as they are (``Content-Type: application/json``);
    ``inputs``: for grpc, ``(name, triton dtype, value)`` with value a nested list (shape ``[1, ...]``).
    ``expect``: the error message must contain one of these (case-insensitive)."""

    name: str
    protocol: str
    expect: tuple[str, ...]
    body: dict[str, Any] | bytes | None = None
    inputs: tuple[tuple[str, str, Any], ...] = ()
    model: str = c.ENSEMBLE
    dangerous: bool = False
    note: str = ""

    def describe(self) -> dict[str, Any]:
        """The entry as the report lists it (the body shortened)."""
        if isinstance(self.body, bytes):
            sent = self.body[:80].decode("utf-8", errors="replace") + ("..." if len(self.body) > 80 else "")
        elif self.body is not None:
            sent = json.dumps(self.body, ensure_ascii=False)[:120]
        else:
            sent = ", ".join(f"{n}:{d}={json.dumps(v)[:40]}" for n, d, v in self.inputs)
        return {"name": self.name, "protocol": self.protocol, "model": self.model, "sent": sent,
                "expect": "4xx naming one of " + " | ".join(self.expect), "dangerous": self.dangerous,
                "note": self.note}


def _ok(**extra: Any) -> dict[str, Any]:
    """A well-formed body, changed by ``extra`` (a value of None drops that field)."""
    body = {c.TEXT_INPUT: "hello", c.MAX_TOKENS: 4, c.EXCLUDE_INPUT_IN_OUTPUT: True}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def _msgs(value: Any) -> dict[str, Any]:
    return _ok(**{c.TEXT_INPUT: None, c.MESSAGES: value if isinstance(value, str) else json.dumps(value)})


def _http(name: str, body: dict[str, Any] | bytes, *expect: str, **kw: Any) -> Malformed:
    return Malformed(name, "http", expect, body=body, **kw)


def _sse(name: str, body: dict[str, Any] | bytes, *expect: str, **kw: Any) -> Malformed:
    if isinstance(body, dict):
        body = {**body, c.STREAM: True}
    return Malformed("sse-" + name, "sse", expect, body=body, **kw)


def _grpc(name: str, inputs: tuple[tuple[str, str, Any], ...], *expect: str, **kw: Any) -> Malformed:
    return Malformed("grpc-" + name, "grpc", expect, inputs=inputs, **kw)


_G_PROMPT = (c.TEXT_INPUT, "BYTES", [["hello"]])
_G_MAX = (c.MAX_TOKENS, "INT32", [[4]])
_G_STREAM = (c.STREAM, "BOOL", [[True]])
_LONG_PROMPT = " ".join(["the"] * 5000)  # more tokens than any max_input_len the soak builds use
_CHAT_OK = [{"role": "user", "content": "hi"}]

HTTP_ENTRIES = (
    _http("no-prompt", _ok(**{c.TEXT_INPUT: None}), c.TEXT_INPUT),
    _http("empty-prompt", _ok(**{c.TEXT_INPUT: ""}), c.TEXT_INPUT),
    _http("prompt-too-long", _ok(**{c.TEXT_INPUT: _LONG_PROMPT}), "max_input_len", c.TEXT_INPUT),
    _http("prompt-not-string", _ok(**{c.TEXT_INPUT: 12345}), c.TEXT_INPUT),
    _http("prompt-and-messages", _ok(**{c.MESSAGES: json.dumps(_CHAT_OK)}), c.MESSAGES),
    _http("no-max-tokens", _ok(**{c.MAX_TOKENS: None}), c.MAX_TOKENS),
    _http("max-tokens-zero", _ok(**{c.MAX_TOKENS: 0}), c.MAX_TOKENS),
    _http("max-tokens-negative", _ok(**{c.MAX_TOKENS: -5}), c.MAX_TOKENS),
    _http("max-tokens-too-many", _ok(**{c.MAX_TOKENS: 100_000}), c.MAX_TOKENS),
    _http("max-tokens-int32-overflow", _ok(**{c.MAX_TOKENS: 2 ** 40}), c.MAX_TOKENS),
    _http("max-tokens-int32-wrap", _ok(**{c.MAX_TOKENS: 2 ** 32 + 4}), c.MAX_TOKENS,
          note="2**32 + 4 must not wrap around to 4"),
    _http("max-tokens-string", _ok(**{c.MAX_TOKENS: "ten"}), c.MAX_TOKENS),
    _http("max-tokens-float", _ok(**{c.MAX_TOKENS: 8.5}), c.MAX_TOKENS),
    _http("max-tokens-list", _ok(**{c.MAX_TOKENS: [4, 4]}), c.MAX_TOKENS),
    _http("max-tokens-null", _ok(**{c.MAX_TOKENS: "__null__"}), c.MAX_TOKENS,
          note="max_tokens: null (a JSON null, written as such)"),
    _http("temperature-negative", _ok(**{c.TEMPERATURE: -1.0}), c.TEMPERATURE),
    _http("temperature-string", _ok(**{c.TEMPERATURE: "hot"}), c.TEMPERATURE),
    _http("temperature-nan", b'{"text_input": "hi", "max_tokens": 4, "temperature": NaN}', c.TEMPERATURE),
    _http("temperature-overflow", b'{"text_input": "hi", "max_tokens": 4, "temperature": 1e999}', c.TEMPERATURE,
          "number"),
    _http("top-p-above-one", _ok(**{c.TOP_P: 1.5}), c.TOP_P),
    _http("top-k-negative", _ok(**{c.TOP_K: -1}), c.TOP_K),
    _http("min-length-negative", _ok(**{c.MIN_LENGTH: -3}), c.MIN_LENGTH),
    _http("random-seed-negative", _ok(**{c.RANDOM_SEED: -1}), c.RANDOM_SEED),
    _http("random-seed-too-big", _ok(**{c.RANDOM_SEED: 2 ** 64}), c.RANDOM_SEED),
    _http("top-k-float", _ok(**{c.TOP_K: 1.5}), c.TOP_K),
    _http("min-length-above-max-tokens", _ok(**{c.MIN_LENGTH: 10}), c.MIN_LENGTH),
    _http("repetition-penalty-zero", _ok(**{c.REPETITION_PENALTY: 0.0}), c.REPETITION_PENALTY),
    _http("beam-width", _ok(**{c.BEAM_WIDTH: 4}), c.BEAM_WIDTH),
    _http("num-return-sequences", _ok(**{c.NUM_RETURN_SEQUENCES: 3}), c.NUM_RETURN_SEQUENCES),
    _http("stop-words-not-strings", _ok(**{c.STOP_WORDS: [1, 2]}), c.STOP_WORDS),
    _http("bias-weights-mismatch", _ok(**{c.EMBEDDING_BIAS_WORDS: ["a", "b"], c.EMBEDDING_BIAS_WEIGHTS: [1.0]}),
          c.EMBEDDING_BIAS_WEIGHTS),
    _http("lora-unsupported", _ok(lora_task_id=3), "lora"),
    _http("unknown-input", _ok(frobnicate=1), "frobnicate"),
    _http("exclude-input-string", _ok(**{c.EXCLUDE_INPUT_IN_OUTPUT: "yes"}), c.EXCLUDE_INPUT_IN_OUTPUT),
    _http("exclude-input-int", _ok(**{c.EXCLUDE_INPUT_IN_OUTPUT: 1}), c.EXCLUDE_INPUT_IN_OUTPUT),
    _http("prompt-list", _ok(**{c.TEXT_INPUT: ["a", "b"]}), c.TEXT_INPUT),
    _http("stream-on-generate", _ok(**{c.STREAM: True}), c.STREAM, "generate_stream", "generate stream",
          note="stream=true belongs on /generate_stream"),
    _http("duplicate-key", b'{"text_input": "hi", "max_tokens": 4, "max_tokens": -1}', c.MAX_TOKENS),
    _http("messages-not-json", _msgs('[{"role": "user"'), c.MESSAGES),
    _http("messages-bad-role", _msgs([{"role": "robot", "content": "x"}]), c.MESSAGES),
    _http("messages-not-list", _msgs({"role": "user", "content": "x"}), c.MESSAGES),
    _http("messages-empty", _msgs([]), c.MESSAGES),
    _http("messages-no-content", _msgs([{"role": "user"}]), c.MESSAGES),
    _http("messages-content-not-string", _msgs([{"role": "user", "content": 5}]), c.MESSAGES),
    _http("messages-as-json-list", _ok(**{c.TEXT_INPUT: None, c.MESSAGES: _CHAT_OK}), c.MESSAGES,
          note="messages sent as a JSON list instead of a JSON string of one"),
    _http("body-not-json", b"{not json", "json", "parse"),
    _http("body-truncated", b'{"text_input": "hi", "max_tokens": 4', "json", "parse"),
    _http("body-empty", b"", "json", "parse", "empty"),
    _http("body-json-array", b'[{"text_input": "hi", "max_tokens": 4}]', "json", "object"),
    _http("body-invalid-utf8", b'{"text_input": "\xff\xfe\xfd", "max_tokens": 4}', "utf", c.TEXT_INPUT),
    _http("unknown-model", _ok(), "no_such_model", model="no_such_model"),
    _http("bls-no-prompt", _ok(**{c.TEXT_INPUT: None}), c.TEXT_INPUT, model=c.BLS),
    _http("bls-top-p-above-one", _ok(**{c.TOP_P: 1.5}), c.TOP_P, model=c.BLS),
    _http("deep-nesting", b'{"text_input": ' + b"[" * DEEP + b"]" * DEEP + b', "max_tokens": 4}',
          "json", "depth", "nest", dangerous=True,
          note=f"JSON nested {DEEP} deep: tritonserver 2.51 overflows its stack parsing it and dies"),
)

SSE_ENTRIES = (
    _sse("no-prompt", _ok(**{c.TEXT_INPUT: None}), c.TEXT_INPUT),
    _sse("max-tokens-negative", _ok(**{c.MAX_TOKENS: -5}), c.MAX_TOKENS),
    _sse("max-tokens-string", _ok(**{c.MAX_TOKENS: "ten"}), c.MAX_TOKENS),
    _sse("messages-bad-role", _msgs([{"role": "robot", "content": "x"}]), c.MESSAGES),
    _sse("unknown-input", _ok(frobnicate=1), "frobnicate"),
    _sse("body-not-json", b"{not json", "json", "parse"),
    _sse("bls-temperature-negative", _ok(**{c.TEMPERATURE: -1.0}), c.TEMPERATURE, model=c.BLS),
)

GRPC_ENTRIES = (
    _grpc("no-prompt", (_G_MAX, _G_STREAM), c.TEXT_INPUT),
    _grpc("no-max-tokens", (_G_PROMPT, _G_STREAM), c.MAX_TOKENS),
    _grpc("max-tokens-wrong-dtype", (_G_PROMPT, (c.MAX_TOKENS, "FP32", [[4.0]]), _G_STREAM), c.MAX_TOKENS),
    _grpc("max-tokens-wrong-shape", (_G_PROMPT, (c.MAX_TOKENS, "INT32", [[4, 4]]), _G_STREAM), c.MAX_TOKENS),
    _grpc("max-tokens-negative", (_G_PROMPT, (c.MAX_TOKENS, "INT32", [[-5]]), _G_STREAM), c.MAX_TOKENS),
    _grpc("temperature-negative", (_G_PROMPT, _G_MAX, (c.TEMPERATURE, "FP32", [[-1.0]]), _G_STREAM),
          c.TEMPERATURE),
    _grpc("messages-bad-role", ((c.MESSAGES, "BYTES", [[json.dumps([{"role": "robot", "content": "x"}])]]),
                                _G_MAX, _G_STREAM), c.MESSAGES),
    _grpc("unknown-input", (_G_PROMPT, _G_MAX, ("frobnicate", "INT32", [[1]]), _G_STREAM), "frobnicate"),
    _grpc("unknown-model", (_G_PROMPT, _G_MAX, _G_STREAM), "no_such_model", model="no_such_model"),
    _grpc("bls-beam-width", (_G_PROMPT, _G_MAX, (c.BEAM_WIDTH, "INT32", [[4]]), _G_STREAM), c.BEAM_WIDTH,
          model=c.BLS),
)

CATALOGUE: tuple[Malformed, ...] = HTTP_ENTRIES + SSE_ENTRIES + GRPC_ENTRIES


def entries(dangerous: bool = False, names: tuple[str, ...] = ()) -> tuple[Malformed, ...]:
    """The entries a run sends: the safe ones, the dangerous ones too with ``dangerous``; only those
    named in ``names`` when it is not empty (a name not in the catalogue raises KeyError)."""
    known = {e.name: e for e in CATALOGUE}
    for name in names:
        if name not in known:
            raise KeyError(f"no catalogue entry {name!r}; known: {', '.join(known)}")
    chosen = [known[n] for n in names] if names else [e for e in CATALOGUE if dangerous or not e.dangerous]
    return tuple(chosen)


def body_bytes(entry: Malformed) -> bytes:
    """What an http/sse entry sends, as bytes (``"__null__"`` values become JSON null)."""
    if isinstance(entry.body, bytes):
        return entry.body
    return json.dumps(entry.body).replace('"__null__"', "null").encode()


def matches(entry: Malformed, message: str) -> bool:
    """Whether an error message names what ``entry`` expects."""
    low = message.lower()
    return any(e.lower() in low for e in entry.expect)
