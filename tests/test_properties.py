"""Property-based tests (hypothesis) of the seams where outside input enters or text leaves:

1. streaming detokenization: for any token ids cut into any chunks, the streamed text joins to the
   one-shot decode, nothing is held back but an incomplete character, and no U+FFFD appears early;
2. the engine's UTF-8 releaser: every released group decodes on its own, and the groups' texts join
   to the one-shot decode (also through CallState, as the engine model streams);
3. chat messages: any JSON either renders or raises InvalidRequestError("messages"); user text never
   becomes a control token;
4. the preprocessing model's tensors and 5. the engine model's tensors: any arrays give well-formed
   outputs (the values asked for, never wrapped into INT32 / FP32) or InvalidRequestError, never another
   exception; besides the random search, a sweep sets each input in turn to every odd value.

Every test is deterministic (derandomize=True). Offline: the Qwen vocabulary comes from dashscope, the
HF tokenizers are built here; the real SmolLM2 / Qwen2.5 tokenizers under artifacts/gguf/ are used
when present and skipped otherwise. Regression tests for the bugs these properties found sit next to
the property that found them.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qwen_triton.chat import (
    HFTokenizer,
    HFTokenizerFiles,
    IncrementalDetokenizer,
    QwenTiktokenTokenizer,
    Tokenizer,
    complete_prefix_len,
    from_word_list,
    parse_messages,
    render_prompt,
    utf8_incomplete_tail,
)
from qwen_triton.chat.defaults import CheckpointJson, GenerationDefaults
from qwen_triton.chat.messages import ROLES
from qwen_triton.errors import InvalidRequestError
from qwen_triton.outputs import RequestOutput
from qwen_triton.sampling_params import SamplingParams
from qwen_triton.serving import contract as c
from qwen_triton.serving.engine_request import EngineRequest, ParseOptions, is_stop_request, parse_engine_request
from qwen_triton.serving.engine_response import CallState, Utf8TokenReleaser
from qwen_triton.serving.postprocess import Postprocessor
from qwen_triton.serving.preprocess import Preprocessor, preprocess_arrays
from qwen_triton.serving.triton_io import texts

GGUF = Path(__file__).resolve().parents[1] / "artifacts" / "gguf"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def props(max_examples: int) -> settings:
    return settings(derandomize=True, deadline=None, max_examples=max_examples)


# ----------------------------------------------------------------------------------------------
# tokenizers: the real Qwen vocabulary, two tiny HF ones built here, the real GGUF imports if present
# ----------------------------------------------------------------------------------------------
QWEN2_LIKE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _byte_level_json() -> str:
    """A Qwen2-like byte-level BPE with ChatML control tokens (ids 0, 1, 2)."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tk = RustTokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["Hello world, how are you?", "你好，世界！今天天气很好。", "流式输出 🙂🫠 émigré",
                            "system user assistant <|im_start|>"] * 20, trainer)
    return tk.to_str()


def _llama_like_json() -> str:
    """A LLaMA-2-like tokenizer: "▁" for spaces, byte fallback for everything else, leading space stripped."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    pieces = ["▁", "H", "e", "l", "o", "w", "r", "d", "▁H", "ll", "▁w", "你", "好", "▁你", "世", "界", "é"]
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "H"), ("l", "l"), ("▁", "w"), ("▁", "你")]
    tk = RustTokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return tk.to_str()


def _gguf_dir(prefix: str) -> Path | None:
    found = sorted(p for p in GGUF.glob(f"{prefix}*") if (p / "tokenizer.json").is_file())
    return found[0] if found else None


@functools.cache
def tokenizer(name: str) -> Tokenizer:
    """A tokenizer by name (built once per session); skips when a real one is not on disk."""
    if name == "qwen":
        return QwenTiktokenTokenizer()
    if name == "bytelevel":
        meta = CheckpointJson({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                               "chat_template": QWEN2_LIKE_TEMPLATE})
        return HFTokenizer(HFTokenizerFiles(_byte_level_json(), meta))
    if name == "llama":
        meta = CheckpointJson({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True})
        return HFTokenizer(HFTokenizerFiles(_llama_like_json(), meta))
    path = _gguf_dir({"smollm2": "smollm2-135m", "qwen2.5": "qwen2.5-coder-0.5b"}[name])
    if path is None:
        pytest.skip(f"no {name} tokenizer under {GGUF} (make build-engine imports it)")
    return HFTokenizer.from_dir(path)


@dataclass(frozen=True, repr=False)
class Vocab:
    """A tokenizer with its ids sorted by what makes streaming hard."""

    name: str
    tok: Tokenizer
    partial: tuple[int, ...]    # bytes that are not valid UTF-8 on their own (pieces of a character)
    multibyte: tuple[int, ...]  # whole non-ASCII characters (CJK, emoji, accents)
    special: tuple[int, ...]
    table: tuple[bytes, ...]    # token_bytes_table(), as the engine service holds it

    def __repr__(self) -> str:  # hypothesis prints it with a failing example
        return f"Vocab({self.name!r})"

    def bytes_of(self, token_id: int) -> bytes:  # EngineService._bytes_of
        return self.table[token_id] if 0 <= token_id < len(self.table) else b""


@functools.cache
def vocab(name: str) -> Vocab:
    tok = tokenizer(name)
    partial, multibyte = [], []
    for i in range(tok.vocab_size):
        raw = tok.token_bytes(i)
        try:
            if not raw.decode("utf-8").isascii():
                multibyte.append(i)
        except UnicodeDecodeError:
            partial.append(i)
    return Vocab(name, tok, tuple(partial), tuple(multibyte), tuple(sorted(tok.special_ids)),
                 tok.token_bytes_table())


STREAM_TOKENIZERS = ["qwen", "llama", "bytelevel", "smollm2", "qwen2.5"]
CHAT_TOKENIZERS = ["qwen", "bytelevel", "smollm2", "qwen2.5"]  # the ones with ChatML control tokens


@pytest.fixture(scope="module", params=STREAM_TOKENIZERS)
def stream_vocab(request) -> Vocab:
    return vocab(request.param)


@pytest.fixture(scope="module", params=CHAT_TOKENIZERS)
def chat_tok(request) -> Tokenizer:
    return tokenizer(request.param)


# ----------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------
CHARS = st.one_of(
    st.characters(codec="utf-8"),                                 # anything but surrogates
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),    # CJK: 3 bytes, often 2 tokens
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji: 4 bytes, often 3 tokens
    st.sampled_from("aé ß\n▁\ue000"),
)
TEXT = st.text(CHARS, max_size=12)
CONTROL_TEXT = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>system\n",
                "<|im_end|>\n<|im_start|>assistant\n", "<s>", "</s>", "<|extra_0|>", "<|", "|>", "im_end",
                "\ue000", "\ue0000\ue000", "<tool_call>"]
CONTENT = st.lists(st.one_of(TEXT, st.sampled_from(CONTROL_TEXT)), max_size=4).map("".join)


def token_ids(v: Vocab) -> st.SearchStrategy[list[int]]:
    """Any ids of the vocabulary (and a few outside it), biased toward pieces of characters, whole
    multi-byte characters and control tokens, mixed with the encodings of CJK / emoji text."""
    n = v.tok.vocab_size
    one = st.one_of(st.integers(0, n - 1), st.sampled_from(v.partial), st.sampled_from(v.partial),
                    st.sampled_from(v.multibyte or (0,)), st.sampled_from(v.special or (0,)),
                    st.sampled_from([-1, n, n + 7, INT32_MAX]))
    segment = st.one_of(st.lists(one, max_size=4), TEXT.map(v.tok.encode))
    return st.lists(segment, max_size=6).map(lambda segs: [i for s in segs for i in s])


def chunked(ids: st.SearchStrategy[list[int]]) -> st.SearchStrategy[tuple[list[int], list[list[int]]]]:
    """ids and a cut of them into consecutive chunks (empty chunks included)."""
    def cut(ids_: list[int]):
        return st.lists(st.integers(0, len(ids_)), max_size=8).map(
            lambda cuts: (ids_, [ids_[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(ids_)])]))
    return ids.flatmap(cut)


def strip_first_space(tok: Tokenizer, text: str) -> str:
    return text[1:] if tok.strips_leading_space and text.startswith(" ") else text


# ----------------------------------------------------------------------------------------------
# 1. incremental detokenization
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip_special", [True, False])
@props(40)
@given(data=st.data())
def test_streamed_chunks_join_to_the_one_shot_decode(stream_vocab, skip_special, data):
    tok = stream_vocab.tok
    ids, chunks = data.draw(chunked(token_ids(stream_vocab)), label="ids, chunks")
    detok = IncrementalDetokenizer(tok, skip_special)
    streamed: list[str] = []
    pushed: list[int] = []
    for chunk in chunks:
        streamed.append(detok.push(chunk))
        pushed += chunk
        raw = b"".join(tok.token_bytes(i, skip_special) for i in pushed)
        ready = len(raw) - utf8_incomplete_tail(raw)
        # nothing is held back but the start of a character that may still complete
        assert detok.pending_bytes == raw[ready:]
        assert "".join(streamed) == strip_first_space(tok, raw[:ready].decode("utf-8", errors="replace"))
    streamed.append(detok.flush())

    one_shot = IncrementalDetokenizer(tok, skip_special)
    whole = one_shot.push(ids) + one_shot.flush()
    assert "".join(streamed) == whole == tok.decode(ids, skip_special)
    offset = 0
    for chunk in streamed[:-1]:  # a U+FFFD before the flush is one the one-shot decode has there too
        assert all(whole[offset + j] == "\ufffd" for j, ch in enumerate(chunk) if ch == "\ufffd")
        offset += len(chunk)


@pytest.mark.parametrize("skip_special", [True, False])
@props(40)
@given(data=st.data())
def test_streaming_whole_text_never_shows_a_replacement_character(stream_vocab, skip_special, data):
    """Ids of real text (control tokens between its pieces), cut anywhere: no chunk holds U+FFFD unless
    the vocabulary cannot encode the text (SmolLM2 has no token for the bytes 0xF1 / 0xF2, say)."""
    tok = stream_vocab.tok
    pieces = data.draw(st.lists(st.one_of(TEXT.filter(lambda t: "\ufffd" not in t),
                                          st.sampled_from(stream_vocab.special or (0,))), max_size=6), label="pieces")
    ids = [i for p in pieces for i in ([p] if isinstance(p, int) else tok.encode(p))]
    cuts = data.draw(st.lists(st.integers(0, len(ids)), max_size=8), label="cuts")
    detok = IncrementalDetokenizer(tok, skip_special)
    streamed = [detok.push(ids[a:b]) for a, b in itertools.pairwise([0, *sorted(cuts), len(ids)])]
    streamed.append(detok.flush())
    whole = tok.decode(ids, skip_special)
    assert "".join(streamed) == whole
    if isinstance(tok, QwenTiktokenTokenizer) and skip_special:  # a byte-level vocabulary with every byte
        assert whole == "".join(unicodedata.normalize("NFC", p) for p in pieces if isinstance(p, str))
    if "\ufffd" not in whole:
        assert not any("\ufffd" in chunk for chunk in streamed)


# ----------------------------------------------------------------------------------------------
# 2. the engine's UTF-8 releaser and per-response decoding
# ----------------------------------------------------------------------------------------------
@props(60)
@given(data=st.data())
def test_released_groups_decode_on_their_own(stream_vocab, data):
    v = stream_vocab
    ids, chunks = data.draw(chunked(token_ids(v)), label="ids, chunks")
    releaser = Utf8TokenReleaser(v.bytes_of)
    groups: list[list[int]] = []
    pushed: list[int] = []
    for chunk in chunks:
        groups.append(releaser.push(chunk))
        pushed += chunk
        # as much as can go: everything up to the last whole character
        assert sum(map(len, groups)) == complete_prefix_len([v.bytes_of(t) for t in pushed])
        assert utf8_incomplete_tail(b"".join(v.bytes_of(t) for g in groups for t in g)) == 0
    groups.append(releaser.flush())
    assert [t for g in groups for t in g] == ids
    for skip_special in (True, False):  # postprocessing decodes each response alone
        post = Postprocessor(v.tok, skip_special)
        assert "".join(post.decode(g) for g in groups) == post.decode(ids)


@props(40)
@given(data=st.data())
def test_streamed_engine_responses_decode_on_their_own(stream_vocab, data):
    """The same through CallState: the engine model's streamed responses, one Postprocessor call each."""
    v = stream_vocab
    ids, chunks = data.draw(chunked(token_ids(v)), label="ids, chunks")
    request = EngineRequest(prompt=[1, 2], params=SamplingParams(max_tokens=len(ids) + 1), streaming=True,
                            exclude_input=False)
    sent = []
    call = CallState([request], sent.append, decoupled=True, token_bytes=v.bytes_of)
    done = 0
    for k, chunk in enumerate(chunks):
        last = k == len(chunks) - 1
        done += len(chunk)
        call.handle(0, RequestOutput("r", chunk, None, last, "length" if last else None, 2, done))
    assert [r.final for r in sent] == [False] * (len(sent) - 1) + [True]
    groups = [r.arrays[c.OUT_OUTPUT_IDS][0, 0].tolist() for r in sent if r.arrays is not None]
    assert [t for g in groups for t in g] == ids  # never the prompt, every token once, in order
    for k in range(1, len(groups)):  # each response but the last ends on a whole character
        assert utf8_incomplete_tail(b"".join(v.bytes_of(t) for g in groups[:k] for t in g)) == 0
    post = Postprocessor(v.tok)
    assert "".join(post.decode(g) for g in groups) == post.decode(ids)


# ----------------------------------------------------------------------------------------------
# 3. chat messages
# ----------------------------------------------------------------------------------------------
def _content_strategy():
    """Message content: mostly text, as text parts too, now and then with a lone surrogate (which
    json.dumps escapes, and which is no text: the HF tokenizers raise TypeError on one)."""
    surrogate = CONTENT.map(lambda t: t + "\udc80")
    return st.sampled_from(["text"] * 6 + ["parts"] * 2 + ["surrogate"]).flatmap(
        lambda kind: {"text": CONTENT, "parts": CONTENT.map(lambda t: [{"type": "text", "text": t}]),
                      "surrogate": surrogate}[kind])


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                 "content": _content_strategy()})


@st.composite
def conversations(draw) -> list[dict]:
    """A well-formed chat: optional system, user/assistant turns, the user last."""
    turns = []
    if draw(st.booleans()):
        turns.append({"role": "system", "content": draw(_content_strategy())})
    for _ in range(draw(st.integers(0, 3))):
        turns.append({"role": "user", "content": draw(_content_strategy())})
        if draw(st.booleans()):
            turns.append({"role": "assistant", "content": draw(_content_strategy())})
    turns.append({"role": "user", "content": draw(_content_strategy())})
    return turns


MESSAGES = st.one_of(conversations(), st.lists(MESSAGE, min_size=1, max_size=6))


def _text_of(content) -> str:
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def _parses(messages: list[dict]) -> bool:
    return (all(m["role"] in ROLES and _is_unicode(_text_of(m["content"])) for m in messages)
            and messages[-1]["role"] == "user")


def _is_unicode(text: str) -> bool:
    return not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def _make_context_accepts(messages: list[dict]) -> bool:
    """The original Qwen make_context's rules: system first only, each assistant after a user."""
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    return _parses(messages) and all(
        m["role"] == "user" or (m["role"] == "assistant" and k > 0 and rest[k - 1]["role"] == "user")
        for k, m in enumerate(rest))


@props(80)
@given(messages=MESSAGES)
def test_chat_rendering_only_the_template_makes_control_tokens(chat_tok, messages):
    tok = chat_tok
    qwen_chatml = isinstance(tok, QwenTiktokenTokenizer)
    try:
        ids = render_prompt(tok, parse_messages(json.dumps(messages)))
    except InvalidRequestError as err:
        assert err.field == "messages"
        assert not (_make_context_accepts(messages) if qwen_chatml else _parses(messages))
        event("rejected")
        return
    event("accepted")
    assert _make_context_accepts(messages) if qwen_chatml else _parses(messages)
    # one turn per message, and a default system turn in front when the first message is not one
    turns = len(messages) + (messages[0]["role"] != "system")
    # the template's own control tokens, and none from what users typed
    assert ids.count(tok.im_start_id) == turns + 1  # + the generation prompt
    assert ids.count(tok.im_end_id) == turns
    assert {i for i in ids if i in tok.special_ids} <= {tok.im_start_id, tok.im_end_id}
    rendered = tok.decode(ids, skip_special=False)
    for m in messages:  # as the tokenizer keeps text (Qwen: NFC; SmolLM2 drops bytes it has no token for)
        assert tok.decode(tok.encode(_text_of(m["content"])), skip_special=False) in rendered


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(CHARS, max_size=6),
                         st.sampled_from(list(ROLES) + ["tool", "USER", "", "robot"]),
                         st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["role", "content", "type", "text", "x"]), inner, max_size=4)), max_leaves=8)
ODD_MESSAGE = st.one_of(
    MESSAGE,
    st.fixed_dictionaries({"role": JSON_SCALARS, "content": st.one_of(JSON, CONTENT)}),
    st.fixed_dictionaries({"role": st.sampled_from(ROLES)}, optional={"content": JSON}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url"]), "text": st.one_of(TEXT, JSON_SCALARS)}), max_size=2)}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.text(st.characters(
        min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=4)}),  # lone surrogates, escaped by json.dumps
    JSON)


def _well_formed(value) -> bool:
    """What parse_messages accepts, written out independently."""
    def content_ok(content) -> bool:
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        return isinstance(content, str) and _is_unicode(content)

    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m and isinstance(m["role"], str)
                    and m["role"] in ROLES and content_ok(m["content"]) for m in value)
            and value[-1]["role"] == "user")


@props(150)
@given(value=st.one_of(conversations(), st.lists(ODD_MESSAGE, max_size=4), JSON), mangle=st.integers(0, 5))
def test_any_messages_json_renders_or_names_the_messages_field(value, mangle):
    text = json.dumps(value)
    if mangle == 1:  # cut short: never valid JSON (unless the cut is a JSON value of its own)
        text = text[: len(text) // 2]
    payload: str | bytes = text
    if mangle == 2:
        payload = text.encode() + b"\xff"
    if mangle == 4:  # nested deeper than json's recursion limit
        payload = "[" * 100_000 + text
    if mangle == 5:  # an integer longer than Python converts from text
        payload = f"[{'1' * 5000}, {text}]"
    tok = tokenizer("qwen")
    accepted = mangle in (0, 3) and _well_formed(value) and _make_context_accepts(value)
    try:
        render_prompt(tok, parse_messages(payload))
    except InvalidRequestError as err:
        assert err.field == "messages" and not accepted
        event(f"rejected: {err}"[:50])
    else:
        assert accepted
        event("accepted")


@pytest.mark.parametrize("name", ["qwen", "bytelevel"])
@pytest.mark.parametrize("payload", [
    '[{"role": "user", "content": "a\\ud800b"}]',                                # a lone surrogate, escaped
    '[{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]',
    "[" * 100_000,                                                                # nested past the recursion limit
    '[{"role": "user", "content": "x", "n": ' + "1" * 5000 + "}]",              # an int of too many digits
])
def test_regression_messages_that_crashed_parsing(name, payload):
    """Found by the properties above: a lone surrogate escaped in JSON made the HF tokenizers raise
    TypeError ("TextInputSequence must be str"); deep nesting raised RecursionError and a 5000-digit
    number ValueError from json.loads."""
    with pytest.raises(InvalidRequestError) as err:
        render_prompt(tokenizer(name), parse_messages(payload))
    assert err.value.field == "messages"


# ----------------------------------------------------------------------------------------------
# arrays of any kind, for the two tensor seams
# ----------------------------------------------------------------------------------------------
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)
ODD_ITEMS = st.one_of(st.binary(max_size=6), st.text(CHARS, max_size=4),
                      st.sampled_from([b"\xed\xa0\x80", b"\xff", b"\xc3", "\ud800", None, 7, -1, 2**70, 2.5,
                                       math.nan, 1j, b"ok", "ok", b""]))


def _object_array(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    size = math.prod(shape)

    def build(items: list) -> np.ndarray:
        arr = np.empty(size, dtype=object)
        for k, item in enumerate(items):
            arr[k] = item
        return arr.reshape(shape)

    return st.lists(ODD_ITEMS, min_size=size, max_size=size).map(build)


NASTY_ARRAY = st.one_of(
    st.sampled_from([np.int8, np.int32, np.int64, np.uint64, np.float32, np.float64, np.bool_, np.complex64])
    .flatmap(lambda dtype: hnp.arrays(dtype, SHAPES)),  # full ranges: NaN, inf, 2**64 - 1, -2**63
    hnp.arrays("S3", SHAPES),
    hnp.arrays(hnp.unicode_string_dtypes(max_len=3), SHAPES),
    SHAPES.flatmap(_object_array),
)


def _fit(value, dtype):
    """`value` clipped into an integer dtype's range (the dtype decides how large a value can get)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return min(max(value, int(info.min)), int(info.max))
    return value


# Values that break naive conversions (int(), float(), str(), bytes.decode, a cast to INT32 / FP32).
ODD_NUMBERS = [0, 1, -1, 2**31, -(2**31) - 1, 2**40, 2**63 - 1, 2**64 - 1, 1.5, math.nan, math.inf, 3e38]
ODD_NUMBER_ITEMS = ODD_NUMBERS + [b"x", None, 1j, "\ud800"]
ODD_TEXT_ITEMS = [b"x", "x", b"\xff", b"\xed\xa0\x80", "\ud800", None, 7, 1j]


def _odd_values(dtype, text: bool) -> st.SearchStrategy:
    if dtype is object:
        return st.sampled_from(ODD_TEXT_ITEMS if text else ODD_NUMBER_ITEMS)
    if np.issubdtype(dtype, np.integer):
        return st.sampled_from([v for v in ODD_NUMBERS if isinstance(v, int)]).map(lambda v: _fit(v, dtype))
    return st.sampled_from(ODD_NUMBERS)


def _odd_filled(shape: tuple[int, ...], dtype, text: bool, uniform: bool) -> st.SearchStrategy[np.ndarray]:
    """An array of `shape` and `dtype` holding odd values: one for all elements (`uniform`) or each its own."""
    size = math.prod(shape)

    def build(items: list) -> np.ndarray:
        arr = np.empty(size, dtype=object)
        for k in range(size):
            arr[k] = items[0 if uniform else k]
        return arr.reshape(shape) if dtype is object else arr.reshape(shape).astype(dtype)

    n = 1 if uniform else size
    return st.lists(_odd_values(dtype, text), min_size=n, max_size=n).map(build)


def _dtypes_holding(value) -> list:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [object]
    if isinstance(value, float):
        return [object, np.float64, np.float32]
    return [object, np.float64] + [d for d in (np.int32, np.int64, np.uint64)
                                   if np.iinfo(d).min <= value <= np.iinfo(d).max]


def _odd_uniform(value, shape: tuple[int, ...], pick: int) -> np.ndarray:
    """`shape` filled with `value`, in one of the dtypes that can hold it (object always can)."""
    dtypes = _dtypes_holding(value)
    arr = np.empty(shape, dtype=object)
    arr.fill(value)
    dtype = dtypes[pick % len(dtypes)]
    return arr if dtype is object else arr.astype(dtype)


def odd_array(batch: int, text: bool = False) -> st.SearchStrategy[np.ndarray]:
    """Mostly an array of the request's batch size holding one value that breaks naive conversions
    (`text`: for a BYTES input); else one mixing such values, or any array at all."""
    uniform = st.builds(_odd_uniform, st.sampled_from(ODD_TEXT_ITEMS if text else ODD_NUMBER_ITEMS),
                        st.sampled_from([(batch,), (batch, 1), (batch, 1), (batch, 2)]), st.integers(0, 3))
    shapes = st.sampled_from([(batch, 2), (batch, 2, 2), (batch, 2, 3), (1, 2, 1)])
    dtypes = st.sampled_from([object, object, np.int64, np.float32] if text else
                             [np.int32, np.int64, np.uint64, np.float32, np.float64, object, object])
    mixed = st.tuples(shapes, dtypes, st.just(text), st.just(False)).flatmap(lambda args: _odd_filled(*args))
    return st.one_of(uniform, uniform, uniform, mixed, NASTY_ARRAY)


def _rows(draw, rows: int, values: st.SearchStrategy, width: int | None = 1, dtype=object) -> np.ndarray:
    """[rows, width] of drawn values (width drawn in 0..3 when None)."""
    width = draw(st.integers(0, 3)) if width is None else width
    arr = np.empty((rows, width), dtype=object)
    for index in np.ndindex(arr.shape):
        arr[index] = draw(values) if dtype is object else _fit(draw(values), dtype)
    return arr if dtype is object else arr.astype(dtype)


# What may be wrong with a request: each test case draws none (about half of them) or one or two.
FLAWS = ("no rows", "batch sizes", "any array", "unsupported", "values", "missing")


def _flaws(draw) -> set[str]:
    return set(draw(st.one_of(st.just([]), st.lists(st.sampled_from(FLAWS), min_size=1, max_size=2))))


def _apply_flaws(draw, flaws: set[str], inputs: dict, batch: int, specs) -> None:
    """A wrong batch size on one input, or any array in place of one or two inputs."""
    if "batch sizes" in flaws and batch and inputs:
        name = draw(st.sampled_from(sorted(inputs)))
        arr = np.asarray(inputs[name])
        if arr.ndim:
            inputs[name] = np.concatenate([arr, arr[:1]]) if len(arr) else np.zeros((batch + 1,) + arr.shape[1:])
    if "any array" in flaws:
        for spec in draw(st.lists(st.sampled_from(specs), min_size=1, max_size=2, unique=True)):
            inputs[spec.name] = draw(odd_array(batch, text=spec.dtype == "BYTES"))


# ----------------------------------------------------------------------------------------------
# 4. the preprocessing model's tensors
# ----------------------------------------------------------------------------------------------
WORD = st.one_of(TEXT.map(str.encode), st.sampled_from([w.encode() for w in CONTROL_TEXT] + [b""]))
NONEMPTY_TEXT = st.text(CHARS, min_size=1, max_size=12)
PROMPT_TEXT = st.lists(st.one_of(NONEMPTY_TEXT, st.sampled_from(CONTROL_TEXT)), min_size=1, max_size=4).map(
    lambda parts: "".join(parts).encode())
ODD_PROMPT_TEXT = st.one_of(PROMPT_TEXT, st.just(b""), ODD_ITEMS)
ODD_MESSAGES_BYTES = st.one_of(MESSAGES.map(lambda m: json.dumps(m).encode()), st.just(b"[{not json"), ODD_ITEMS)
PRE_UNSUPPORTED = [s for s in c.PREPROCESSING_INPUTS if s.unsupported]
_INT32 = st.integers(INT32_MIN, INT32_MAX)


PRE_PARSED = [c.PRE_QUERY, c.PRE_MESSAGES, c.PRE_REQUEST_OUTPUT_LEN, c.PRE_STOP_WORDS_DICT, c.PRE_BAD_WORDS_DICT,
              c.PRE_EMBEDDING_BIAS_WORDS, c.PRE_EMBEDDING_BIAS_WEIGHTS, c.PRE_END_ID, c.PRE_PAD_ID]


@st.composite
def preprocess_inputs(draw) -> dict[str, np.ndarray]:
    """Preprocessing inputs of B rows (an input of one row applies to every row), with `_flaws`."""
    flaws = _flaws(draw)
    odd = "values" in flaws
    batch = 0 if "no rows" in flaws else draw(st.sampled_from([1, 1, 2, 3]))

    def rows(values, width=1, dtype=object) -> np.ndarray:
        return _rows(draw, draw(st.sampled_from([batch, batch, 1])) if batch else 0, values, width, dtype)

    inputs: dict[str, np.ndarray] = {}
    prompt = draw(st.sampled_from(["text", "messages"] + (["both", "none"] if odd else [])))
    if prompt in ("text", "both"):
        inputs[c.PRE_QUERY] = rows(ODD_PROMPT_TEXT if odd else PROMPT_TEXT)
    if prompt in ("messages", "both"):
        inputs[c.PRE_MESSAGES] = rows(ODD_MESSAGES_BYTES if odd else conversations().map(
            lambda m: json.dumps(m).encode()))
    lengths = st.integers(1, 64)
    if odd:
        lengths = st.one_of(st.integers(-2, 64), st.sampled_from([INT32_MAX, 2**40, 2**64 - 1]))
    inputs[c.PRE_REQUEST_OUTPUT_LEN] = rows(lengths, dtype=draw(st.sampled_from(
        [np.int32, np.int32, np.int64, np.uint64] + ([np.float32] if odd else []))))
    ids = st.one_of(_INT32, st.sampled_from([2**40, -(2**40)])) if odd else _INT32
    for name in (c.PRE_END_ID, c.PRE_PAD_ID):
        if draw(st.booleans()):
            inputs[name] = rows(ids, dtype=draw(st.sampled_from([np.int32, np.int64])))
    for name in (c.PRE_STOP_WORDS_DICT, c.PRE_BAD_WORDS_DICT, c.PRE_EMBEDDING_BIAS_WORDS):
        if draw(st.booleans()):
            inputs[name] = rows(st.one_of(WORD, ODD_ITEMS) if odd else WORD, width=None)
    if c.PRE_EMBEDDING_BIAS_WORDS in inputs and not (odd and draw(st.booleans())):  # odd: words without weights
        width = inputs[c.PRE_EMBEDDING_BIAS_WORDS].shape[1] + (draw(st.sampled_from([0, 1])) if odd else 0)
        weights = st.floats(-10, 10, width=32)
        if odd:
            weights = st.one_of(weights, st.sampled_from([math.nan, math.inf, 3e38, -3e38]))
        inputs[c.PRE_EMBEDDING_BIAS_WEIGHTS] = rows(weights, width=width, dtype=np.float32)
    for spec in draw(st.lists(st.sampled_from(PRE_UNSUPPORTED), max_size=2, unique=True)):
        zero = "unsupported" not in flaws or draw(st.booleans())
        if spec.dtype == "BYTES":
            inputs[spec.name] = rows(st.just(b"" if zero else b"x"))
        else:
            inputs[spec.name] = np.full((batch, 1), 0 if zero else 1, dtype=np.uint64)
    if "missing" in flaws:
        del inputs[draw(st.sampled_from(sorted(inputs)))]
    _apply_flaws(draw, flaws, inputs, batch, c.PREPROCESSING_INPUTS)
    return inputs


def check_preprocess_outputs(tok: Tokenizer, inputs: dict, out: dict[str, np.ndarray]) -> None:
    """The shapes and dtypes of the preprocessing contract, and values the engine can take."""
    batch = out[c.PRE_INPUT_ID].shape[0]
    assert batch == np.shape(inputs[c.PRE_REQUEST_OUTPUT_LEN])[0] >= 1
    expected = {c.PRE_INPUT_ID: 2, c.PRE_REQUEST_INPUT_LEN: 2, c.PRE_DECODER_INPUT_ID: 2,
                c.PRE_REQUEST_DECODER_INPUT_LEN: 2, c.PRE_OUT_REQUEST_OUTPUT_LEN: 2, c.PRE_STOP_WORDS_IDS: 3,
                c.PRE_BAD_WORDS_IDS: 3, c.PRE_EMBEDDING_BIAS: 2, c.PRE_OUT_END_ID: 2, c.PRE_OUT_PAD_ID: 2}
    assert set(out) == set(expected)
    for name, ndim in expected.items():
        arr = out[name]
        assert arr.ndim == ndim and arr.shape[0] == batch, name
        assert arr.dtype == (np.float32 if name == c.PRE_EMBEDDING_BIAS else np.int32), name
    for name in (c.PRE_REQUEST_INPUT_LEN, c.PRE_REQUEST_DECODER_INPUT_LEN, c.PRE_OUT_REQUEST_OUTPUT_LEN,
                 c.PRE_OUT_END_ID, c.PRE_OUT_PAD_ID):
        assert out[name].shape == (batch, 1), name
    lengths = out[c.PRE_REQUEST_INPUT_LEN][:, 0]
    assert lengths.min() >= 1 and lengths.max() == out[c.PRE_INPUT_ID].shape[1]
    for row, n in zip(out[c.PRE_INPUT_ID], lengths):
        assert 0 <= row[:n].min() and row[:n].max() < tok.vocab_size
    assert out[c.PRE_DECODER_INPUT_ID].shape == (batch, 0) and not out[c.PRE_REQUEST_DECODER_INPUT_LEN].any()
    assert out[c.PRE_OUT_REQUEST_OUTPUT_LEN].min() >= 1
    for name in (c.PRE_STOP_WORDS_IDS, c.PRE_BAD_WORDS_IDS):
        assert out[name].shape[1] == 2 and out[name].shape[2] >= 1
        for row in out[name]:
            assert all(0 <= t < tok.vocab_size for word in from_word_list(row, name) for t in word)
    bias = out[c.PRE_EMBEDDING_BIAS]
    assert bias.shape[1] in (0, tok.vocab_size) and np.isfinite(bias).all()
    for name in (c.PRE_QUERY, c.PRE_MESSAGES, c.PRE_STOP_WORDS_DICT, c.PRE_BAD_WORDS_DICT, c.PRE_EMBEDDING_BIAS_WORDS):
        for item in np.asarray(inputs.get(name, []), dtype=object).reshape(-1):  # text, and nothing else
            assert isinstance(item, str) and _is_unicode(item) or isinstance(item, bytes) and _is_utf8(item), name
    for i in range(batch):  # what the request said comes out as it said it, never wrapped into INT32
        assert out[c.PRE_OUT_REQUEST_OUTPUT_LEN][i, 0] == _row_value(inputs, c.PRE_REQUEST_OUTPUT_LEN, i)
        for name, out_name in ((c.PRE_END_ID, c.PRE_OUT_END_ID), (c.PRE_PAD_ID, c.PRE_OUT_PAD_ID)):
            if name in inputs:
                assert out[out_name][i, 0] == _row_value(inputs, name, i)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _row_value(inputs: dict, name: str, i: int) -> int:
    arr = np.asarray(inputs[name])
    return int(np.asarray(arr[i if arr.shape[0] > 1 else 0]).reshape(-1)[0])


def _outcome(label: str) -> None:
    if currently_in_test_context():  # the sweeps below run these checks outside hypothesis
        event(label[:60])


def _preprocess_or_refuse(tok: Tokenizer, inputs: dict) -> None:
    try:
        out = preprocess_arrays(Preprocessor(tok), inputs)
    except InvalidRequestError as err:
        assert isinstance(err.field, str) and err.field
        _outcome(f"rejected: {err}")
        return
    _outcome("accepted")
    check_preprocess_outputs(tok, inputs, out)


@pytest.mark.parametrize("name", ["qwen", "bytelevel", "llama"])
@props(120)
@given(inputs=preprocess_inputs())
def test_preprocessing_gives_the_contract_or_an_invalid_request(name, inputs):
    _preprocess_or_refuse(tokenizer(name), inputs)


PRE_GOOD = {  # a request that sets every input preprocessing reads
    c.PRE_QUERY: np.array([[b"hi"]], dtype=object), c.PRE_REQUEST_OUTPUT_LEN: np.array([[4]], np.int32),
    c.PRE_STOP_WORDS_DICT: np.array([[b"stop", b"<|im_end|>"]], dtype=object),
    c.PRE_BAD_WORDS_DICT: np.array([[b"bad"]], dtype=object),
    c.PRE_EMBEDDING_BIAS_WORDS: np.array([[b"a", b"b"]], dtype=object),
    c.PRE_EMBEDDING_BIAS_WEIGHTS: np.array([[1.5, -1.0]], np.float32),
    c.PRE_END_ID: np.array([[7]], np.int32), c.PRE_PAD_ID: np.array([[0]], np.int32)}


def odd_arrays(text: bool, shapes: tuple[tuple[int, ...], ...] = ()):
    """Every odd value, in every dtype that holds it, as [1] and [1, 1] arrays and of `shapes`."""
    for value in ODD_TEXT_ITEMS if text else ODD_NUMBER_ITEMS:
        for shape in [(1,), (1, 1), *shapes]:
            for pick in range(len(_dtypes_holding(value))):
                yield _odd_uniform(value, shape, pick)


@pytest.mark.parametrize("odd_input", PRE_PARSED)
def test_preprocessing_every_odd_value_of_one_input(odd_input):
    """A sweep, not a search: a good request but for one input, set to each odd value in each dtype
    that holds it; the same contract as the property above."""
    spec = next(s for s in c.PREPROCESSING_INPUTS if s.name == odd_input)
    good = {k: v for k, v in PRE_GOOD.items() if not (odd_input == c.PRE_MESSAGES and k == c.PRE_QUERY)}
    for arr in odd_arrays(text=spec.dtype == "BYTES"):
        for name in ("qwen", "bytelevel"):
            try:
                _preprocess_or_refuse(tokenizer(name), {**good, odd_input: arr})
            except AssertionError as exc:
                raise AssertionError(f"{odd_input} = {arr!r} ({name})") from exc


@props(60)
@given(rows=st.lists(st.tuples(st.one_of(NONEMPTY_TEXT, MESSAGES), st.lists(WORD, max_size=3),
                               st.integers(1, 64)), min_size=1, max_size=3))
def test_preprocessing_valid_rows_tokenize_as_the_chat_layer_does(rows):
    tok = tokenizer("qwen")
    width = max(len(words) for _, words, _ in rows)
    prompts = np.array([[p.encode() if isinstance(p, str) else b""] for p, _, _ in rows], dtype=object)
    messages = np.array([[b"" if isinstance(p, str) else json.dumps(p).encode()] for p, _, _ in rows], dtype=object)
    stop = np.empty((len(rows), width), dtype=object)
    stop[:] = b""
    for i, (_, words, _) in enumerate(rows):
        stop[i, :len(words)] = words
    inputs = {c.PRE_QUERY: prompts, c.PRE_MESSAGES: messages, c.PRE_STOP_WORDS_DICT: stop,
              c.PRE_REQUEST_OUTPUT_LEN: np.array([[n] for _, _, n in rows], dtype=np.int32)}
    try:
        out = preprocess_arrays(Preprocessor(tok), inputs)
    except InvalidRequestError as err:  # only a conversation that make_context refuses
        assert err.field == "messages"
        assert any(not isinstance(p, str) and not _make_context_accepts(p) for p, _, _ in rows)
        return
    check_preprocess_outputs(tok, inputs, out)
    for i, (prompt, words, n) in enumerate(rows):
        expected = (tok.encode(prompt, allow_special=True) if isinstance(prompt, str)
                    else render_prompt(tok, parse_messages(json.dumps(prompt))))
        assert out[c.PRE_INPUT_ID][i, :out[c.PRE_REQUEST_INPUT_LEN][i, 0]].tolist() == expected
        assert out[c.PRE_OUT_REQUEST_OUTPUT_LEN][i, 0] == n
        stop_words = [tok.encode(w.decode(), allow_special=True) for w in words if w]
        extra_ends = [[e] for e in tok.eos_ids[1:]]  # no end id given: the other end ids stop too
        assert from_word_list(out[c.PRE_STOP_WORDS_IDS][i]) == [w for w in stop_words if w] + extra_ends


FLOAT32_MAX = float(np.finfo(np.float32).max)


@props(100)
@given(pairs=st.lists(st.tuples(st.sampled_from(["a", "ab", " a", "<|im_end|>", "你好", "好"]),
                                st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False),
                                          st.sampled_from([FLOAT32_MAX, -FLOAT32_MAX, 2e38, 1.5]))),
                      min_size=1, max_size=4))
def test_embedding_bias_adds_up_weights_or_refuses_them(pairs):
    """Each word's weight lands on each of its tokens, summed where words share one, as float32."""
    tok = tokenizer("qwen")
    expected: dict[int, float] = {}
    for word, weight in pairs:
        for t in tok.encode(word, allow_special=True):
            expected[t] = expected.get(t, 0.0) + float(np.float32(weight))
    inputs = _pre(**{c.PRE_EMBEDDING_BIAS_WORDS: np.array([[w.encode() for w, _ in pairs]], dtype=object),
                     c.PRE_EMBEDDING_BIAS_WEIGHTS: np.array([[w for _, w in pairs]], dtype=np.float32)})
    try:
        bias = preprocess_arrays(Preprocessor(tok), inputs)[c.PRE_EMBEDDING_BIAS][0]
    except InvalidRequestError as err:
        assert err.field == c.EMBEDDING_BIAS_WEIGHTS
        assert any(abs(v) > FLOAT32_MAX for v in expected.values())
        return
    assert np.isfinite(bias).all()
    assert {int(t): float(bias[t]) for t in np.flatnonzero(bias)} == {
        t: float(np.float32(v)) for t, v in expected.items() if np.float32(v) != 0}


def _pre(**inputs) -> dict:
    return {c.PRE_QUERY: np.array([[b"hi"]], dtype=object), c.PRE_REQUEST_OUTPUT_LEN: np.array([[4]], np.int32),
            **inputs}


@pytest.mark.parametrize("inputs, field", [
    # a batch of no rows: IndexError
    ({c.PRE_QUERY: np.zeros((0, 1), object), c.PRE_REQUEST_OUTPUT_LEN: np.zeros((0, 1), np.int32)}, c.MAX_TOKENS),
    # out of INT32: silently wrapped into the INT32 outputs (2**40 -> 0), or OverflowError past int64
    ({c.PRE_REQUEST_OUTPUT_LEN: np.array([[2**40]], np.int64)}, c.MAX_TOKENS),
    ({c.PRE_REQUEST_OUTPUT_LEN: np.array([[2**64 - 1]], np.uint64)}, c.MAX_TOKENS),
    (_pre(**{c.PRE_END_ID: np.array([[2**40]], np.int64)}), c.END_ID),
    (_pre(**{c.PRE_PAD_ID: np.array([[-(2**40)]], np.int64)}), c.PAD_ID),
    # not numbers: ValueError from int() / float()
    ({c.PRE_REQUEST_OUTPUT_LEN: np.array([[math.nan]])}, c.PRE_REQUEST_OUTPUT_LEN),
    ({c.PRE_REQUEST_OUTPUT_LEN: np.array([[b"x"]], dtype=object)}, c.PRE_REQUEST_OUTPUT_LEN),
    (_pre(**{c.PRE_EMBEDDING_BIAS_WORDS: np.array([[b"a"]], dtype=object),
             c.PRE_EMBEDDING_BIAS_WEIGHTS: np.array([[b"x"]], dtype=object)}), c.EMBEDDING_BIAS_WEIGHTS),
    # two finite FP32 weights on one token: an infinite FP32 EMBEDDING_BIAS
    (_pre(**{c.PRE_EMBEDDING_BIAS_WORDS: np.array([[b"a", b"a"]], dtype=object),
             c.PRE_EMBEDDING_BIAS_WEIGHTS: np.array([[3e38, 3e38]], dtype=np.float32)}), c.EMBEDDING_BIAS_WEIGHTS),
    # not text: str(None) / str(7) were tokenized as "None" / "7"; a str lone surrogate broke HF tokenizers
    ({c.PRE_QUERY: np.array([[None]], dtype=object)}, c.TEXT_INPUT),
    (_pre(**{c.PRE_STOP_WORDS_DICT: np.array([[7]], dtype=object)}), c.STOP_WORDS),
    ({c.PRE_QUERY: np.array([["\ud800"]], dtype=object)}, c.TEXT_INPUT),
])
@pytest.mark.parametrize("name", ["qwen", "bytelevel"])
def test_regression_preprocessing_inputs_that_crashed_or_wrapped(name, inputs, field):
    with pytest.raises(InvalidRequestError) as err:
        preprocess_arrays(Preprocessor(tokenizer(name)), {**_pre(), **inputs})
    assert err.value.field == field


def test_texts_accepts_bytes_and_text_only():
    assert texts(np.array([[b"a", "b"]], dtype=object), "f") == ["a", "b"]
    assert texts(np.array([["\u00e9"]]), "f") == ["\u00e9"]


# ----------------------------------------------------------------------------------------------
# 5. the engine model's tensors
# ----------------------------------------------------------------------------------------------
OPTS = ParseOptions(lambda end_id: (2,) if end_id is None else (end_id,),
                    GenerationDefaults(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05))
_FLAG = st.booleans()
_ODD_F32 = st.one_of(st.floats(-3, 3, width=32), st.sampled_from([0.0, 1.0, math.nan, math.inf, -math.inf]))
_ODD_I = st.one_of(st.integers(-3, 20), st.sampled_from([INT32_MAX, INT32_MIN]))
ENGINE_SCALARS = {  # name: (values TensorRT-LLM takes, odd values, dtypes)
    c.IN_TEMPERATURE: (st.floats(0, 2, width=32), _ODD_F32, [np.float32]),
    c.IN_TOP_K: (st.integers(0, 50), _ODD_I, [np.int32]),
    c.IN_TOP_P: (st.floats(0, 1, width=32), _ODD_F32, [np.float32]),
    c.IN_REPETITION_PENALTY: (st.floats(0.5, 2, width=32), _ODD_F32, [np.float32]),
    c.IN_MIN_LENGTH: (st.integers(0, 1), _ODD_I, [np.int32]),
    c.IN_PRESENCE_PENALTY: (st.floats(-2, 2, width=32), _ODD_F32, [np.float32]),
    c.IN_FREQUENCY_PENALTY: (st.floats(-2, 2, width=32), _ODD_F32, [np.float32]),
    c.IN_RANDOM_SEED: (st.one_of(st.integers(0, 2**64 - 1), st.just(2**64 - 1)),
                       st.sampled_from([0, 2**64 - 1, -1, 1.5]), [np.uint64]),
    c.IN_END_ID: (st.integers(INT32_MIN, INT32_MAX), st.sampled_from([2**40, -(2**40)]), [np.int32, np.int64]),
    c.IN_PAD_ID: (st.integers(INT32_MIN, INT32_MAX), st.sampled_from([2**40, -(2**40)]), [np.int32, np.int64]),
    c.IN_BEAM_WIDTH: (st.just(1), st.integers(0, 2), [np.int32]),
    c.IN_NUM_RETURN_SEQUENCES: (st.just(1), st.integers(0, 2), [np.int32]),
    c.IN_LEN_PENALTY: (_ODD_F32, _ODD_F32, [np.float32]),  # accepted and unused, as by TensorRT-LLM for beam 1
    c.IN_EARLY_STOPPING: (_FLAG, _FLAG, [np.bool_]),
    c.IN_RETURN_LOG_PROBS: (_FLAG, _FLAG, [np.bool_]), c.IN_RETURN_CONTEXT_LOGITS: (_FLAG, _FLAG, [np.bool_]),
    c.IN_RETURN_GENERATION_LOGITS: (_FLAG, _FLAG, [np.bool_]), c.IN_RETURN_PERF_METRICS: (_FLAG, _FLAG, [np.bool_]),
    c.IN_EXCLUDE_INPUT: (_FLAG, _FLAG, [np.bool_]), c.IN_STREAMING: (_FLAG, _FLAG, [np.bool_]),
    c.IN_STOP: (_FLAG, _FLAG, [np.bool_]),
    c.IN_TOP_LOGPROBS: (st.integers(0, 20), st.sampled_from([21, -1, 2**40]), [np.int32, np.int64]),
}
ENGINE_UNSUPPORTED = [s for s in c.ENGINE_INPUTS if s.unsupported]


def _column(draw, rows: int, values, dtype) -> np.ndarray:
    """A scalar input of `rows` rows: [rows] (reshape []) or [rows, 1]."""
    arr = np.array([_fit(draw(values), dtype) for _ in range(rows)], dtype=dtype)
    return arr if draw(st.booleans()) else arr.reshape(rows, 1)


def _word_lists(draw, batch: int, odd: bool) -> np.ndarray:
    """[B, 2, N] in the layout's rules (ids, cumulative ends, -1 padding); odd: one column overwritten."""
    words = [draw(st.lists(st.lists(st.integers(0, 200_000), min_size=1, max_size=3), max_size=3))
             for _ in range(batch)]
    width = max([1] + [sum(map(len, w)) for w in words])
    out = np.zeros((batch, 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for i, ws in enumerate(words):
        flat = [t for w in ws for t in w]
        ends = list(itertools.accumulate(len(w) for w in ws))
        out[i, 0, :len(flat)] = flat
        out[i, 1, :len(ends)] = ends
    if odd and draw(st.booleans()):
        out[..., draw(st.integers(0, width - 1))] = draw(st.integers(-3, 5))
    return out


ENGINE_PARSED = [c.IN_INPUT_IDS, c.IN_INPUT_LENGTHS, c.IN_REQUEST_OUTPUT_LEN, c.IN_STOP_WORDS, c.IN_BAD_WORDS,
                 c.IN_EMBEDDING_BIAS, c.IN_DECODER_INPUT_IDS, c.IN_DECODER_INPUT_LENGTHS, *ENGINE_SCALARS]


@st.composite
def engine_inputs(draw) -> dict[str, np.ndarray]:
    """Engine-model inputs of B rows (scalars as [B] or [B, 1]; one row applies to all), with `_flaws`."""
    flaws = _flaws(draw)
    odd = "values" in flaws
    batch = 0 if "no rows" in flaws else draw(st.sampled_from([1, 1, 2, 3]))

    def column(values, dtype) -> np.ndarray:
        return _column(draw, draw(st.sampled_from([batch, batch, 1])) if batch else 0, values, dtype)

    length = draw(st.integers(1, 5))
    ids = draw(hnp.arrays(np.int32, (batch, length), elements=st.integers(-5 if odd else 0, 200_000)))
    inputs = {c.IN_INPUT_IDS: ids[0] if batch == 1 and draw(st.booleans()) else ids}
    inputs[c.IN_INPUT_LENGTHS] = column(st.integers(-1, length + 1) if odd else st.integers(1, length), np.int32)
    lengths = st.one_of(st.integers(-1, 64), st.sampled_from([INT32_MAX, 2**64 - 1])) if odd else st.integers(2, 64)
    inputs[c.IN_REQUEST_OUTPUT_LEN] = column(lengths, draw(st.sampled_from([np.int32, np.uint64])))
    for name in draw(st.lists(st.sampled_from(sorted(ENGINE_SCALARS)), max_size=6, unique=True)):
        values, odd_values, dtypes = ENGINE_SCALARS[name]
        inputs[name] = column(st.one_of(values, odd_values) if odd else values, draw(st.sampled_from(dtypes)))
    for name in (c.IN_STOP_WORDS, c.IN_BAD_WORDS):
        if draw(st.integers(0, 2)) == 0:
            inputs[name] = _word_lists(draw, batch, odd)
    if draw(st.integers(0, 2)) == 0:
        shape = draw(st.sampled_from([(batch, 5), (batch, 0), (batch,), (batch, 1, 3), (1, 5)]))
        values = st.one_of(st.just(0.0), st.floats(-5, 5, width=32))
        if odd:
            values = st.one_of(values, st.sampled_from([math.nan, math.inf]))
        inputs[c.IN_EMBEDDING_BIAS] = draw(hnp.arrays(np.float32, shape, elements=values))
    if draw(st.integers(0, 3)) == 0:
        decoder_len = draw(st.sampled_from([0, 0, 2] if odd else [0]))
        inputs[c.IN_DECODER_INPUT_IDS] = np.zeros((batch, decoder_len), np.int32)
        if draw(st.booleans()):
            inputs[c.IN_DECODER_INPUT_LENGTHS] = column(st.integers(0, 2) if odd else st.just(0), np.int32)
    for spec in draw(st.lists(st.sampled_from(ENGINE_UNSUPPORTED), max_size=2, unique=True)):
        value = 1 if "unsupported" in flaws and draw(st.booleans()) else 0
        inputs[spec.name] = (np.array([[b"x" if value else b""]] * batch, dtype=object) if spec.dtype == "BYTES"
                             else np.full((batch, 1), value, dtype=np.float32 if "FP" in spec.dtype else np.int64))
    if "missing" in flaws:
        del inputs[draw(st.sampled_from(sorted(inputs)))]
    _apply_flaws(draw, flaws, inputs, batch, c.ENGINE_INPUTS)
    return inputs


@props(250)
@given(inputs=engine_inputs(), decoupled=st.booleans())
def test_engine_request_parsing_gives_requests_or_an_invalid_request(inputs, decoupled):
    _parse_or_refuse(inputs, decoupled)


ENGINE_GOOD = {  # a request that sets every input the engine model reads
    c.IN_INPUT_IDS: np.array([[1, 2, 3]], np.int32), c.IN_INPUT_LENGTHS: np.array([3], np.int32),
    c.IN_REQUEST_OUTPUT_LEN: np.array([8], np.int32),
    c.IN_STOP_WORDS: np.array([[[5, 6], [1, 2]]], np.int32), c.IN_BAD_WORDS: np.array([[[9], [1]]], np.int32),
    c.IN_EMBEDDING_BIAS: np.array([[0, 0, 1.5]], np.float32),
    c.IN_DECODER_INPUT_IDS: np.zeros((1, 0), np.int32), c.IN_DECODER_INPUT_LENGTHS: np.array([0], np.int32),
    c.IN_TEMPERATURE: np.array([0.5], np.float32), c.IN_TOP_K: np.array([5], np.int32),
    c.IN_TOP_P: np.array([0.9], np.float32), c.IN_REPETITION_PENALTY: np.array([1.1], np.float32),
    c.IN_MIN_LENGTH: np.array([1], np.int32), c.IN_PRESENCE_PENALTY: np.array([0.1], np.float32),
    c.IN_FREQUENCY_PENALTY: np.array([0.1], np.float32), c.IN_RANDOM_SEED: np.array([7], np.uint64),
    c.IN_END_ID: np.array([2], np.int32), c.IN_PAD_ID: np.array([0], np.int32),
    c.IN_BEAM_WIDTH: np.array([1], np.int32), c.IN_NUM_RETURN_SEQUENCES: np.array([1], np.int32),
    c.IN_LEN_PENALTY: np.array([1.0], np.float32), c.IN_TOP_LOGPROBS: np.array([0], np.int32),
    **{name: np.array([False]) for name in (c.IN_EARLY_STOPPING, c.IN_RETURN_LOG_PROBS, c.IN_RETURN_CONTEXT_LOGITS,
                                            c.IN_RETURN_GENERATION_LOGITS, c.IN_RETURN_PERF_METRICS,
                                            c.IN_EXCLUDE_INPUT, c.IN_STREAMING, c.IN_STOP)}}


@pytest.mark.parametrize("odd_input", ENGINE_PARSED)
def test_engine_request_parsing_every_odd_value_of_one_input(odd_input):
    """A sweep, not a search: a good request but for one input, set to each odd value in each dtype
    that holds it; the same contract as the property above."""
    shapes = {c.IN_STOP_WORDS: (1, 2, 1), c.IN_BAD_WORDS: (1, 2, 1), c.IN_INPUT_IDS: (1, 3),  # as ENGINE_GOOD's
              c.IN_EMBEDDING_BIAS: (1, 3)}
    for arr in odd_arrays(text=False, shapes=(shapes[odd_input],) if odd_input in shapes else ()):
        try:
            _parse_or_refuse({**ENGINE_GOOD, odd_input: arr}, decoupled=True)
        except AssertionError as exc:
            raise AssertionError(f"{odd_input} = {arr!r}") from exc


def _parse_or_refuse(inputs: dict, decoupled: bool) -> None:
    opts = ParseOptions(OPTS.end_ids_of, OPTS.defaults, decoupled=decoupled)
    assert isinstance(is_stop_request(inputs), bool)
    try:
        requests = parse_engine_request(inputs, opts)
    except InvalidRequestError as err:
        assert isinstance(err.field, str) and err.field
        _outcome(f"rejected: {err}")
        return
    _outcome("accepted")
    batch = 1 if np.ndim(inputs[c.IN_INPUT_IDS]) == 1 else np.shape(inputs[c.IN_INPUT_IDS])[0]
    assert len(requests) == batch >= 1
    ids = np.asarray(inputs[c.IN_INPUT_IDS])
    for i, r in enumerate(requests):
        assert (r.batch_index, r.batch_size) == (i, batch)
        assert all(type(t) is int for t in r.prompt)
        row = (ids if ids.ndim == 1 else ids[i]).reshape(-1)
        assert r.prompt == [int(t) for t in row[:_row_value(inputs, c.IN_INPUT_LENGTHS, i)]]
        assert r.params.max_tokens == _row_value(inputs, c.IN_REQUEST_OUTPUT_LEN, i)
        assert type(r.pad_id) is int and INT32_MIN <= r.pad_id <= INT32_MAX
        p = r.params
        assert isinstance(p, SamplingParams) and 1 <= p.max_tokens and 0 <= p.min_tokens <= p.max_tokens
        assert math.isfinite(p.temperature) and 0 < p.top_p <= 1 and p.top_k >= 0
        assert p.seed is None or 0 <= p.seed < 2**64
        assert all(math.isfinite(b) for _, b in p.logit_bias)
        assert 0 <= p.top_logprobs <= 20 and (p.logprobs or not p.top_logprobs)
        assert not r.streaming or decoupled


def _eng(**extra) -> dict:
    return {c.IN_INPUT_IDS: np.array([[1, 2, 3]], np.int32), c.IN_INPUT_LENGTHS: np.array([3], np.int32),
            c.IN_REQUEST_OUTPUT_LEN: np.array([8], np.int32), **extra}


@pytest.mark.parametrize("inputs, field", [
    # no rows: parsed to [] and the request would never be answered; a 0-d input_ids: IndexError
    ({c.IN_INPUT_IDS: np.zeros((0, 3), np.int32), c.IN_INPUT_LENGTHS: np.zeros(0, np.int32),
      c.IN_REQUEST_OUTPUT_LEN: np.zeros(0, np.int32)}, c.IN_INPUT_IDS),
    (_eng(**{c.IN_INPUT_IDS: np.int32(5)}), c.IN_INPUT_IDS),
    # NaN / infinity / bytes where an int or float belongs: ValueError / OverflowError
    (_eng(**{c.IN_INPUT_LENGTHS: np.array([math.nan], np.float32)}), c.IN_INPUT_LENGTHS),
    (_eng(**{c.IN_REQUEST_OUTPUT_LEN: np.array([math.inf])}), c.IN_REQUEST_OUTPUT_LEN),
    (_eng(**{c.IN_TOP_K: np.array([math.nan], np.float32)}), c.IN_TOP_K),
    (_eng(**{c.IN_BEAM_WIDTH: np.array([math.nan], np.float32)}), c.IN_BEAM_WIDTH),
    (_eng(**{c.IN_TEMPERATURE: np.array([b"x"], dtype=object)}), c.IN_TEMPERATURE),
    (_eng(**{c.IN_INPUT_IDS: np.array([[1.0, math.nan, 3.0]])}), c.IN_INPUT_IDS),
    (_eng(**{c.IN_INPUT_IDS: np.array([[b"a", b"b", b"c"]], dtype=object)}), c.IN_INPUT_IDS),
    (_eng(**{c.IN_EMBEDDING_BIAS: np.array([[b"x"]], dtype=object)}), c.IN_EMBEDDING_BIAS),
    (_eng(**{c.IN_EMBEDDING_BIAS: np.array([[1j]], np.complex64)}), c.IN_EMBEDDING_BIAS),
    (_eng(**{c.IN_RANDOM_SEED: np.array([1.5])}), c.IN_RANDOM_SEED),
    # word lists of the wrong rank: TypeError
    (_eng(**{c.IN_STOP_WORDS: np.array([[1, 2]], np.int32)}), c.IN_STOP_WORDS),
    (_eng(**{c.IN_BAD_WORDS: np.ones((1, 2, 2, 1), np.int32)}), c.IN_BAD_WORDS),
    (_eng(**{c.IN_STOP_WORDS: np.array([[[math.nan], [1.0]]])}), c.IN_STOP_WORDS),
    # a pad id out of INT32 was padded into output_ids silently wrapped
    (_eng(**{c.IN_PAD_ID: np.array([2**40], np.int64)}), c.IN_PAD_ID),
    (_eng(**{c.IN_END_ID: np.array([2**40], np.int64)}), c.IN_END_ID),
])
def test_regression_engine_inputs_that_crashed_or_wrapped(inputs, field):
    with pytest.raises(InvalidRequestError) as err:
        parse_engine_request(inputs, OPTS)
    assert err.value.field == field


@pytest.mark.parametrize("name", [c.IN_REQUEST_OUTPUT_LEN, c.IN_TEMPERATURE, c.IN_END_ID])
def test_regression_a_none_row_value_is_refused_not_taken_for_a_missing_input(name):
    """An object array [B] holding None: the row's value read as "input not given" (request_output_len:
    TypeError; temperature, end_id: silently the default)."""
    with pytest.raises(InvalidRequestError) as err:
        parse_engine_request(_eng(**{name: np.array([None], dtype=object)}), OPTS)
    assert err.value.field == name


def test_regression_an_empty_stop_input_is_no_stop_request():
    assert is_stop_request({c.IN_STOP: np.zeros((0,), bool)}) is False  # was IndexError
    assert is_stop_request({c.IN_STOP: np.array([True])}) is True


def test_seed_up_to_2_64_minus_1_still_parses():
    (r,) = parse_engine_request(_eng(**{c.IN_RANDOM_SEED: np.array([2**64 - 1], np.uint64)}), OPTS)
    assert r.params.seed == 2**64 - 1
