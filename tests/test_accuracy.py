"""tools/accuracy.py (the engine against transformers: token agreement, ROUGE, perplexity), its dataset
in tools/data/, and the engine seam it scores through: LLMEngine.score (teacher-forced log probs)."""
from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import VOCAB, write_qwen2

from qwen_triton import EngineConfig, InvalidRequestError, LLMEngine, SamplingParams
from qwen_triton.chat import QwenTiktokenTokenizer, parse_messages, render_prompt
from qwen_triton.chat.tokenizer import default_qwen_vocab

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "accuracy.py"


@pytest.fixture(scope="module")
def accuracy():
    """tools/accuracy.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("accuracy_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    return write_qwen2(str(tmp_path_factory.mktemp("acc") / "qwen2"), seed=7)


@pytest.fixture(scope="module")
def tiny_qwen_vocab(tmp_path_factory):
    """A tiny random Qwen2 over the real Qwen vocabulary, with qwen.tiktoken: what the chat layer needs."""
    path = write_qwen2(str(tmp_path_factory.mktemp("acc") / "qwen2-vocab"), seed=8, vocab_size=151936)
    (Path(path) / "qwen.tiktoken").write_bytes(default_qwen_vocab())
    return path


def engine_for(path: str, **kw) -> LLMEngine:
    kw.setdefault("block_size", 4)
    kw.setdefault("max_num_batched_tokens", 16)  # a 70-token sequence is scored in 5 prefill chunks
    return LLMEngine(path, EngineConfig(device="cpu", dtype="float32", **kw))


def hf_logprobs(path: str, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0, :-1].float()
        return torch.log_softmax(logits, dim=-1).gather(1, x[0, 1:, None])[:, 0]


# -- LLMEngine.score -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk, lengths", [(16, (70, 5)), (300, (450,))])
def test_score_matches_transformers_log_softmax(tiny_qwen2, chunk, lengths):
    """Prefill chunks smaller and larger than the runner's block of logits rows (256)."""
    rng = random.Random(chunk)
    engine = engine_for(tiny_qwen2, max_num_batched_tokens=chunk)
    free = engine.stats().num_free_blocks
    for n in lengths:
        ids = [rng.randrange(3, VOCAB) for _ in range(n)]
        ours = torch.tensor(engine.score(ids))
        assert ours.shape == (n - 1,)
        torch.testing.assert_close(ours, hf_logprobs(tiny_qwen2, ids), atol=1e-4, rtol=0)
    assert engine.score([5]) == []
    assert engine.stats().num_free_blocks == free  # every block back in the pool


def test_score_between_steps_leaves_running_requests_untouched(tiny_qwen2):
    prompt, params = [11, 12, 13, 14, 15], SamplingParams(max_tokens=12, temperature=0.0)
    expected = engine_for(tiny_qwen2).generate([prompt], params)[0]
    engine = engine_for(tiny_qwen2)
    engine.add_request("r", prompt, params)
    got: list[int] = []
    for i in range(20):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            got.extend(out.new_token_ids)
        if i in (0, 3):
            engine.score(list(range(3, 60)))  # its KV goes to other blocks of the same pool
    assert got == expected


def test_score_rejects_bad_input(tiny_qwen2):
    engine = engine_for(tiny_qwen2, max_model_len=32)
    for bad, message in (([], "empty"), (list(range(3, 36)), "exceed the context"), ([1, VOCAB], "vocabulary")):
        with pytest.raises(InvalidRequestError, match=message) as err:
            engine.score(bad)
        assert err.value.field == "token_ids"


# -- metrics ---------------------------------------------------------------------------------------


def test_cjk_rouge_tokenizer_keeps_chinese(accuracy):
    from rouge_score import rouge_scorer

    tok = accuracy.CjkRougeTokenizer()
    assert tok.tokenize("Hello, 世界! abc123 DEF。日本語かな") == ["hello", "世", "界", "abc123", "def",
                                                                 "日", "本", "語", "か", "な"]
    assert tok.tokenize("…，。！") == []
    ref, cand = "今天天气很好，我们去公园散步。", "今天天气不错，我们去公园。"
    default = rouge_scorer.RougeScorer(["rouge1"]).score(ref, cand)["rouge1"].fmeasure
    assert default == 0.0  # why the tool passes its own tokenizer
    scorer = rouge_scorer.RougeScorer(list(accuracy.ROUGE_TYPES), tokenizer=tok)
    scores = accuracy.rouge_f(scorer, cand, ref)
    assert 0.5 < scores["rouge1"] < 1.0 and 0.0 < scores["rouge2"] < scores["rouge1"]
    assert accuracy.rouge_f(scorer, "。", "。") == {name: 1.0 for name in accuracy.ROUGE_TYPES}


def test_token_agreement(accuracy):
    assert accuracy.token_agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert accuracy.token_agreement([1, 2, 9, 4], [1, 2, 3, 4]) == 0.5
    assert accuracy.token_agreement([1, 2], [1, 2, 3, 4]) == 0.5  # stopped early
    assert accuracy.token_agreement([], []) == 1.0


def test_parse_settings(accuracy):
    assert accuracy.parse_settings(["block_size=8", "num_kv_blocks=none", "enforce_eager=true",
                                    "kv_cache_memory_fraction=0.5", "attention_backend=torch"]) == {
        "block_size": 8, "num_kv_blocks": None, "enforce_eager": True, "kv_cache_memory_fraction": 0.5,
        "attention_backend": "torch"}
    with pytest.raises(SystemExit, match="no_such_field"):
        accuracy.parse_settings(["no_such_field=1"])


# -- the dataset -----------------------------------------------------------------------------------


def test_dataset_covers_languages_and_kinds_and_renders(accuracy):
    items = accuracy.load_items(accuracy.PROMPTS_FILE)
    assert len(items) >= 50
    assert len({item["id"] for item in items}) == len(items)
    assert {item["lang"] for item in items} == {"en", "zh"}
    assert {item["kind"] for item in items} == {"summarize", "qa", "code", "chat"}
    for lang in ("en", "zh"):
        assert {item["kind"] for item in items if item["lang"] == lang} == {"summarize", "qa", "code", "chat"}
    chats = [item for item in items if item["kind"] == "chat"]
    assert all(c["messages"][0]["role"] == "system" and len(c["messages"]) >= 4 for c in chats)
    tokenizer = QwenTiktokenTokenizer()
    for item, ids in zip(items, accuracy.render_items(tokenizer, items)):
        text = tokenizer.decode(ids, skip_special=False)
        assert ids == render_prompt(tokenizer, parse_messages(item["messages"]))
        assert item["messages"][-1]["content"] in text and text.endswith("<|im_start|>assistant\n")
    windows = accuracy.text_windows(tokenizer, accuracy.PLAIN_TEXT_FILE, 1024)
    assert sum(map(len, windows)) > 2000 and all(len(w) <= 1024 for w in windows)


# -- the tool end to end -----------------------------------------------------------------------------


def test_tool_engine_vs_transformers(accuracy, tiny_qwen_vocab, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert accuracy.main(["--model", tiny_qwen_vocab, "--limit", "3", "--max-new-tokens", "8",
                          "--ppl-window", "256", "--json", str(out)]) == 0
    assert "perplexity" in capsys.readouterr().out
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report) == {"candidate", "reference", "max_new_tokens", "end_ids", "groups", "perplexity",
                           "seconds", "items"}
    assert report["reference"].startswith("transformers:") and report["candidate"].startswith("engine:")
    assert len(report["items"]) == 3
    for row in report["items"]:
        assert row["candidate_ids"] == row["reference_ids"] and 0 < len(row["candidate_ids"]) <= 8
    overall = report["groups"]["all"]
    assert overall["n"] == 3 and overall["exact"] == 1.0 and overall["agreement"] == 1.0
    assert all(overall[name] == 1.0 for name in ("rouge1", "rouge2", "rougeL"))
    assert {"kind=summarize", "kind=qa", "lang=en", "lang=zh"} <= set(report["groups"])
    ppl = report["perplexity"]
    assert ppl["windows"] > 1 and ppl["scored"] == ppl["tokens"] - ppl["windows"]
    assert ppl["candidate"] == pytest.approx(ppl["reference"], rel=1e-3)
    assert ppl["logprob_max_abs_diff"] < 1e-3


def test_tool_engine_vs_engine_config(accuracy, tiny_qwen_vocab, tmp_path):
    """--reference engine: the same checkpoint under another EngineConfig (here: other KV block sizes)."""
    out = tmp_path / "report.json"
    accuracy.main(["--model", tiny_qwen_vocab, "--reference", "engine", "--reference-set", "block_size=4",
                   "--set", "max_num_batched_tokens=64", "--limit", "2", "--max-new-tokens", "4",
                   "--ppl-window", "128", "--json", str(out)])
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["reference"].startswith("engine:")
    assert report["groups"]["all"]["exact"] == 1.0
    assert report["perplexity"]["ratio"] == pytest.approx(1.0, rel=1e-4)
