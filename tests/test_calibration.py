"""The quantized build's calibration set (qwen_triton/quant/calibration.jsonl) and its rendering
(qwen_triton/quant/calibration.py): its mix, its distance from the evaluation data, and its token ids with
the real Qwen vocabulary (make_context layout) and with a tiny byte-level tokenizer and jinja template."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from qwen_triton.chat import HFTokenizer, QwenTiktokenTokenizer, load_tokenizer
from qwen_triton.chat.template import DEFAULT_SYSTEM
from qwen_triton.quant.calibration import (
    KINDS,
    LANGS,
    calibration_token_ids,
    load_calibration,
    render_conversation,
)
from qwen_triton.quant.spec import QuantSpec

ROOT = Path(__file__).resolve().parents[1]
EVAL_PROMPTS = ROOT / "tools" / "data" / "accuracy_prompts.jsonl"
EVAL_TEXT = ROOT / "tools" / "data" / "plain_text.txt"
NGRAM = 12
# A word: a run of Latin letters and digits, or one Han character (Chinese has no spaces between words).
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[\u3400-\u4dbf\u4e00-\u9fff]")
HAN = re.compile(r"[\u4e00-\u9fff]")
FENCE = re.compile(r"^```(\w+)", re.MULTILINE)
# Qwen2-like: ChatML, "\n" after every turn, a default system prompt when the chat has none.
TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return load_calibration()


@pytest.fixture(scope="module")
def qwen() -> QwenTiktokenTokenizer:
    return QwenTiktokenTokenizer()  # the real vocabulary, shipped by dashscope: offline


def ngrams(text: str) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def chatml_text(messages: list[dict], turn_end: str) -> str:
    """The ChatML text of a whole conversation: turns joined by "\\n" (make_context, turn_end "") or each
    followed by it (Qwen2 templates, turn_end "\\n"); the assistant's opening after a final user turn."""
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *messages]
    turns = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" for m in messages]
    text = "\n".join(turns) + turn_end
    if messages[-1]["role"] == "user":
        text += ("" if turn_end else "\n") + "<|im_start|>assistant\n"
    return text


def test_items_are_well_formed_and_mixed(items):
    assert len(items) == 48
    assert len({item["id"] for item in items}) == len(items)
    for item in items:
        assert item["id"].startswith(f"{item['lang']}-{item['kind']}-")
        roles = [m["role"] for m in item["messages"]]
        body = roles[1:] if roles[0] == "system" else roles
        assert body[::2] == ["user"] * len(body[::2]) and body[1::2] == ["assistant"] * len(body[1::2]), item["id"]
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in item["messages"])
        text = "".join(m["content"] for m in item["messages"])
        assert bool(HAN.search(text)) == (item["lang"] == "zh"), item["id"]
    for lang in LANGS:
        assert {item["kind"] for item in items if item["lang"] == lang} == set(KINDS)
    assert 0.55 <= sum(item["lang"] == "en" for item in items) / len(items) <= 0.65
    # the build runs the first calib_prompts items: they too hold both languages and every kind
    first = items[:next(f.default for f in dataclasses.fields(QuantSpec) if f.name == "calib_prompts")]
    assert {(item["lang"], item["kind"]) for item in first} == {(lang, kind) for lang in LANGS for kind in KINDS}


def test_kinds_have_their_shape(items):
    fences = set()
    for item in items:
        roles = [m["role"] for m in item["messages"]]
        if item["kind"] == "prose":
            assert roles == ["user"], item["id"]
        elif item["kind"] == "chat":
            assert roles.count("user") >= 2 and roles[-1] == "assistant", item["id"]
        else:  # code and qa: the answer is there
            assert roles[-1] == "assistant", item["id"]
        if item["kind"] == "code":
            replies = [m["content"] for m in item["messages"] if m["role"] == "assistant"]
            assert any(FENCE.search(r) for r in replies), item["id"]
            fences |= {lang for m in item["messages"] for lang in FENCE.findall(m["content"])}
    assert {"python", "c", "sql", "javascript", "sh"} <= fences


def test_no_text_shared_with_the_evaluation_data(items):
    eval_texts = [EVAL_TEXT.read_text(encoding="utf-8")]
    for line in EVAL_PROMPTS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            eval_texts += [m["content"] for m in json.loads(line)["messages"]]
    seen = set().union(*map(ngrams, eval_texts))
    han = sum(bool(HAN.match(gram[0])) for gram in seen)
    assert han > 1000 and len(seen) - han > 2000  # both files really were cut into word runs, zh and en
    shared = {item["id"]: " ".join(sorted(ngrams(m["content"]) & seen)[0])
              for item in items for m in item["messages"] if ngrams(m["content"]) & seen}
    assert not shared


def test_load_limit():
    assert load_calibration(5) == load_calibration()[:5]
    assert load_calibration(0) == []
    with pytest.raises(ValueError):
        load_calibration(-1)


def test_token_ids_with_the_qwen_vocabulary(items, qwen):
    sequences = calibration_token_ids(qwen)
    assert len(sequences) == len(items)
    lengths = [len(ids) for ids in sequences]
    assert 12_000 <= sum(lengths) <= 16_000 and min(lengths) >= 40 and max(lengths) <= 700
    for item, ids in zip(items, sequences):
        messages = item["messages"]
        assert qwen.decode(ids, skip_special=False) == chatml_text(messages, ""), item["id"]
        turns = len(messages) + (messages[0]["role"] != "system") + (messages[-1]["role"] == "user")
        assert ids.count(qwen.im_start_id) == turns  # content never turns into special tokens
    assert calibration_token_ids(qwen, 7, max_len=64) == [ids[:64] for ids in sequences[:7]]


def test_token_ids_with_a_jinja_template(items, tmp_path):
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    tk = RustTokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([m["content"] for item in items for m in item["messages"]], trainer)
    tk.save(str(tmp_path / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": TEMPLATE}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, HFTokenizer)
    for item, ids in zip(items, calibration_token_ids(tokenizer)):
        text = chatml_text(item["messages"], "\n")
        assert ids == tokenizer.encode(text, allow_special=True), item["id"]
        assert ids == render_conversation(tokenizer, item["messages"])
