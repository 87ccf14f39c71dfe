"""A checkpoint's token defaults and generation defaults, decided in one place (qwen_triton/chat/defaults.py),
and what preprocessing does with them."""
from __future__ import annotations

import json

import pytest
from test_chat import build_sentencepiece_style_dir

from qwen_triton.chat import load_tokenizer
from qwen_triton.chat.defaults import CheckpointJson, GenerationDefaults, post_processor_adds_bos
from qwen_triton.serving.preprocess import Preprocessor, PreprocessRequest

VOCAB = {"<s>": 1, "</s>": 2, "<|endoftext|>": 7, "<|im_end|>": 8}
TEMPLATE_BOS = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                         {"Sequence": {"id": "A", "type_id": 0}}]}
TEMPLATE_PLAIN = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}]}


def _tokens(tokenizer_config=None, generation_config=None, chat_end_ids=(), encoder_adds_bos=None):
    files = CheckpointJson(tokenizer_config or {}, generation_config or {})
    return files.tokens(VOCAB.get, chat_end_ids=chat_end_ids, encoder_adds_bos=encoder_adds_bos)


@pytest.mark.parametrize("tokenizer_config, encoder_adds_bos, add_bos", [
    ({"bos_token": "<|endoftext|>", "add_bos_token": False}, None, False),  # Qwen2.5 (the BOS bug)
    ({"bos_token": "<|endoftext|>"}, False, False),                          # said by the post-processor
    ({"bos_token": "<s>", "add_bos_token": True}, None, True),                # LLaMA 2
    ({"bos_token": "<s>"}, True, True),                                       # LLaMA 3: post-processor only
    ({"bos_token": {"content": "<s>"}, "add_bos_token": True}, False, True),  # the config wins
    ({"add_bos_token": True}, None, False),                                   # no BOS token to add
])
def test_add_bos_is_read_from_the_checkpoint(tokenizer_config, encoder_adds_bos, add_bos):
    assert _tokens(tokenizer_config, encoder_adds_bos=encoder_adds_bos).add_bos is add_bos


def test_end_pad_and_bos_ids_in_order_of_authority():
    t = _tokens({"eos_token": "<|im_end|>", "pad_token": "</s>", "bos_token": "<s>"},
                {"eos_token_id": [8, 7], "pad_token_id": 7, "bos_token_id": 99}, chat_end_ids=(8, 7, 2))
    assert t.eos_ids == (8, 7, 2) and t.pad_id == 7 and t.bos_id == 1
    t = _tokens({}, {"eos_token_id": 2, "bos_token_id": 1})
    assert (t.eos_ids, t.bos_id, t.pad_id) == ((2,), 1, None)
    original_qwen = _tokens({}, {"eos_token_id": 7, "pad_token_id": 7}, chat_end_ids=(8, 7))
    assert original_qwen.eos_ids == (8, 7)  # <|im_end|> first: it ends a chat reply


def test_post_processor_reading():
    assert post_processor_adds_bos(TEMPLATE_BOS) is True
    assert post_processor_adds_bos(TEMPLATE_PLAIN) is False
    assert post_processor_adds_bos({"type": "Sequence", "processors": [{"type": "ByteLevel"}, TEMPLATE_BOS]})
    assert post_processor_adds_bos({"type": "ByteLevel"}) is None and post_processor_adds_bos(None) is None


def test_generation_defaults():
    assert GenerationDefaults.from_generation_config({}) == GenerationDefaults()
    qwen_chat = {"do_sample": True, "top_k": 0, "top_p": 0.8, "repetition_penalty": 1.1}
    assert GenerationDefaults.from_generation_config(qwen_chat) == GenerationDefaults(1.0, 0, 0.8, 1.1)
    assert GenerationDefaults.from_generation_config({"do_sample": False, "temperature": 0.7}).temperature == 0


@pytest.mark.parametrize("add_bos", [True, False])
def test_preprocessing_prepends_the_bos_only_when_the_checkpoint_asks(tmp_path, add_bos):
    root = build_sentencepiece_style_dir(tmp_path)
    (root / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                            "add_bos_token": add_bos}))
    (root / "generation_config.json").write_text(json.dumps({"pad_token_id": 0, "do_sample": True,
                                                             "top_p": 0.5}))
    tokenizer = load_tokenizer(root)
    pre = Preprocessor(tokenizer)
    ids = pre(PreprocessRequest(text="Hello world", messages=None, output_len=4)).input_ids
    plain = tokenizer.encode("Hello world")
    assert ids == ([1] + plain if add_bos else plain)
    already = pre(PreprocessRequest(text="<s>Hello", messages=None, output_len=4)).input_ids
    assert already.count(1) == 1  # a prompt that starts with the BOS does not get a second one
    result = pre(PreprocessRequest(text="Hello", messages=None, output_len=4))
    assert (result.end_id, result.pad_id) == (2, 0)
    assert tokenizer.generation_defaults == GenerationDefaults(temperature=1.0, top_p=0.5)
