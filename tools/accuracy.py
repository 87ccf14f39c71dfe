#!/usr/bin/env python3
"""Accuracy of the engine against a reference, in the spirit of TensorRT-LLM's summarize.py.

    .venv/bin/python tools/accuracy.py --model /tmp/ref_qwen                      # engine vs transformers
    .venv/bin/python tools/accuracy.py --model /tmp/ref_qwen --limit 8 --json out.json
    .venv/bin/python tools/accuracy.py --model /ckpt/int8 --reference /ckpt/fp32    # engine vs engine
    .venv/bin/python tools/accuracy.py --model DIR --set dtype=bfloat16 --reference engine

A *candidate* runner (always our engine on --model, EngineConfig overridden by --set KEY=VALUE) and a
*reference* runner (`transformers` on --model: the default; `engine`: our engine on --model with
--reference-set; a folder: our engine on that checkpoint with --reference-set) each do two things:
`generate(prompts, max_new_tokens)` greedily and `logprobs(token_ids)` teacher-forced. They run one after
the other (only one model in memory at a time) on the same inputs:

  prompts     tools/data/accuracy_prompts.jsonl (English and Chinese: summarize, qa, code, chat), rendered
              once with --model's tokenizer and chat template (qwen_triton.chat); both sides get the same ids.
              Generation stops at the tokenizer's end ids, which stay in the output on both sides.
  outputs     per item: greedy token agreement (matching prefix / longer output), exact match, and
              ROUGE-1/2/L F-measure of the candidate's text against the reference's.
  perplexity  tools/data/plain_text.txt, tokenized once, scored in consecutive windows of --ppl-window
              tokens (each a fresh sequence, led by BOS where raw text gets one; the same windows on
              both sides): exp(-mean log p) over every scored token.

Prints a table per kind, language, kind/language and overall; --json writes the whole report, per item.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from rouge_score import rouge_scorer

from qwen_triton import EngineConfig, LLMEngine, SamplingParams
from qwen_triton.chat import Tokenizer, load_tokenizer, parse_messages, render_prompt

DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPTS_FILE = DATA_DIR / "accuracy_prompts.jsonl"
PLAIN_TEXT_FILE = DATA_DIR / "plain_text.txt"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- runners -------------------------------------------------------------------------------------


class Runner(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy outputs, each ending with its end id when one was produced."""

    def logprobs(self, token_ids: list[int]) -> list[float]:
        """log p(token i | tokens < i) for i = 1 .. n - 1."""


class EngineRunner:
    """Our engine; all prompts go in at once (inflight batching, as served)."""

    def __init__(self, path: str, config: EngineConfig, end_ids: Sequence[int]):
        self.name = f"engine:{path}"
        self.engine = LLMEngine(path, config)
        self.end_ids = tuple(end_ids)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        # end ids as one-token stop sequences: they end generation *and* stay in the output,
        # as transformers' generate keeps its eos token
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0,
                                stop_token_ids=tuple((e,) for e in self.end_ids))
        return self.engine.generate(prompts, params)

    def logprobs(self, token_ids: list[int]) -> list[float]:
        return self.engine.score(token_ids)


class TransformersRunner:
    """Hugging Face transformers on the same folder, one prompt at a time (no padding)."""

    def __init__(self, path: str, device: str, dtype: str, end_ids: Sequence[int]):
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.name = f"transformers:{path}"
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[dtype]).to(self.device).eval()
        # the checkpoint's generation_config.json (repetition_penalty, top_k, ...) must not bend greedy decoding
        self.model.generation_config = GenerationConfig()
        self.end_ids = list(end_ids)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        outputs = []
        for prompt in prompts:
            ids = torch.tensor([prompt], device=self.device)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, num_beams=1, eos_token_id=self.end_ids,
                                      pad_token_id=self.end_ids[0] if self.end_ids else 0)
            outputs.append(out[0, len(prompt):].tolist())
        return outputs

    @torch.inference_mode()
    def logprobs(self, token_ids: list[int]) -> list[float]:
        ids = torch.tensor([token_ids], device=self.device)
        logits = self.model(input_ids=ids).logits[0, :-1].float()  # [n - 1, vocab]
        return torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0].tolist()


# -- metrics -------------------------------------------------------------------------------------


class CjkRougeTokenizer:
    """A rouge-score tokenizer for mixed English and Chinese.

    rouge-score's default tokenizer lowercases and replaces everything outside [a-z0-9] by spaces, so a
    Chinese text becomes empty and scores 0 against anything. This one keeps the same ASCII words and
    makes every CJK ideograph (and kana / hangul syllable) a token of its own: character-level ROUGE,
    the usual choice for Chinese, which has no spaces between words. Punctuation is dropped, as there.
    """

    _TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[a-z0-9]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOKEN.findall(text.lower())


def token_agreement(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """Length of the common prefix over the longer output's length (1.0 when identical)."""
    longest = max(len(candidate), len(reference))
    if longest == 0:
        return 1.0
    same = 0
    for a, b in zip(candidate, reference):
        if a != b:
            break
        same += 1
    return same / longest


def rouge_f(scorer: rouge_scorer.RougeScorer, candidate: str, reference: str) -> dict[str, float]:
    """ROUGE F-measures; identical texts score 1 (rouge-score gives 0 when both have no tokens)."""
    if candidate == reference:
        return {name: 1.0 for name in ROUGE_TYPES}
    scores = scorer.score(reference, candidate)  # (target, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def perplexity(logprobs: Sequence[float]) -> float:
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else float("nan")


# -- data ----------------------------------------------------------------------------------------


def load_items(path: Path, limit: int | None = None) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    return items[:limit] if limit else items


def render_items(tokenizer: Tokenizer, items: Sequence[dict]) -> list[list[int]]:
    return [render_prompt(tokenizer, parse_messages(item["messages"])) for item in items]


def text_windows(tokenizer: Tokenizer, path: Path, window: int) -> list[list[int]]:
    """The plain text's tokens cut into consecutive windows of at most `window` tokens, each a fresh
    sequence: it starts with BOS where the tokenizer puts one before raw text (LLaMA 2, not Qwen)."""
    ids = tokenizer.encode(path.read_text(encoding="utf-8"))
    head = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    step = window - len(head)
    windows = [head + ids[i:i + step] for i in range(0, len(ids), step)]
    return [w for w in windows if len(w) > 1]  # a lone token predicts nothing


# -- one side ------------------------------------------------------------------------------------


@dataclasses.dataclass
class SideResult:
    name: str
    outputs: list[list[int]]
    logprobs: list[float]  # every scored token of every window, in order
    generate_s: float
    score_s: float


def run_side(make_runner: Callable[[], Runner], prompts: list[list[int]], max_new_tokens: int,
             windows: list[list[int]]) -> SideResult:
    """Load one runner, generate and score, and let it go (one model in memory at a time)."""
    runner = make_runner()
    t0 = time.perf_counter()
    outputs = runner.generate(prompts, max_new_tokens)
    t1 = time.perf_counter()
    logprobs = [lp for window in windows for lp in runner.logprobs(window)]
    t2 = time.perf_counter()
    return SideResult(runner.name, outputs, logprobs, t1 - t0, t2 - t1)


def cached_side(cache: Path | None, make_runner: Callable[[], Runner], prompts: list[list[int]],
                max_new_tokens: int, windows: list[list[int]]) -> SideResult:
    """run_side, or its result saved in `cache` by an earlier run on the very same inputs (a reference
    shared by many candidates, e.g. the unquantized model against each quantization mode)."""
    key = {"prompts": prompts, "max_new_tokens": max_new_tokens, "windows": windows}
    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved["key"] == key:
            return SideResult(**saved["side"])
    side = run_side(make_runner, prompts, max_new_tokens, windows)
    if cache is not None:
        cache.write_text(json.dumps({"key": key, "side": dataclasses.asdict(side)}), encoding="utf-8")
    return side


# -- the report ----------------------------------------------------------------------------------


def item_rows(items: Sequence[dict], prompts: Sequence[list[int]], cand: SideResult, ref: SideResult,
              tokenizer: Tokenizer) -> list[dict]:
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=CjkRougeTokenizer())
    rows = []
    for item, prompt, c_ids, r_ids in zip(items, prompts, cand.outputs, ref.outputs, strict=True):
        c_text, r_text = tokenizer.decode(c_ids), tokenizer.decode(r_ids)
        rows.append({
            "id": item["id"], "lang": item["lang"], "kind": item["kind"], "prompt_tokens": len(prompt),
            "agreement": token_agreement(c_ids, r_ids), "exact": c_ids == r_ids,
            **rouge_f(scorer, c_text, r_text),
            "candidate_ids": c_ids, "reference_ids": r_ids, "candidate_text": c_text, "reference_text": r_text,
        })
    return rows


def group_summary(rows: Sequence[dict]) -> dict[str, dict]:
    """Means per group: all, kind=..., lang=..., kind/lang=..."""
    groups: dict[str, list[dict]] = {"all": list(rows)}
    for row in rows:
        for key in (f"kind={row['kind']}", f"lang={row['lang']}", f"{row['kind']}/{row['lang']}"):
            groups.setdefault(key, []).append(row)
    order = sorted(groups, key=lambda k: (k != "all", "/" in k, not k.startswith("kind"), k))
    return {key: {"n": len(groups[key]),
                  "exact": statistics.fmean(float(r["exact"]) for r in groups[key]),
                  **{m: statistics.fmean(r[m] for r in groups[key]) for m in ("agreement", *ROUGE_TYPES)}}
            for key in order}


def perplexity_summary(cand: SideResult, ref: SideResult, windows: list[list[int]], window: int) -> dict:
    diffs = [abs(a - b) for a, b in zip(cand.logprobs, ref.logprobs, strict=True)]
    c_ppl, r_ppl = perplexity(cand.logprobs), perplexity(ref.logprobs)
    return {"text": PLAIN_TEXT_FILE.name, "tokens": sum(len(w) for w in windows), "scored": len(diffs),
            "windows": len(windows), "window": window, "candidate": c_ppl, "reference": r_ppl,
            "ratio": c_ppl / r_ppl, "logprob_mean_abs_diff": statistics.fmean(diffs) if diffs else 0.0,
            "logprob_max_abs_diff": max(diffs, default=0.0)}


def format_report(report: dict) -> str:
    lines = [f"candidate  {report['candidate']}", f"reference  {report['reference']}",
             f"{len(report['items'])} prompts, greedy, at most {report['max_new_tokens']} new tokens", "",
             f"{'group':<16} {'n':>3} {'exact':>6} {'agree':>6} {'rouge1':>7} {'rouge2':>7} {'rougeL':>7}"]
    for key, g in report["groups"].items():
        lines.append(f"{key:<16} {g['n']:>3} {g['exact']:>6.3f} {g['agreement']:>6.3f} "
                     f"{g['rouge1']:>7.4f} {g['rouge2']:>7.4f} {g['rougeL']:>7.4f}")
    p = report["perplexity"]
    lines += ["", f"perplexity of {p['text']}: {p['tokens']} tokens in {p['windows']} windows of <= {p['window']}",
              f"  candidate {p['candidate']:.4f}   reference {p['reference']:.4f}   ratio {p['ratio']:.6f}",
              f"  |log p difference| mean {p['logprob_mean_abs_diff']:.3g}, max {p['logprob_max_abs_diff']:.3g}"
              f" over {p['scored']} tokens", ""]
    for side in ("candidate", "reference"):
        s = report["seconds"][side]
        lines.append(f"time {side:<9} generate {s['generate']:7.1f} s   score {s['score']:7.1f} s")
    lines.append(f"time total     {report['seconds']['total']:.1f} s")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------


def parse_settings(pairs: Sequence[str]) -> dict:
    """KEY=VALUE pairs into EngineConfig fields, typed after the field (none: None)."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(EngineConfig)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        kind = fields[key]
        if value.lower() == "none" and "None" in kind:
            out[key] = None
        elif kind.startswith("bool"):
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif kind.startswith("int"):
            out[key] = int(value)
        elif kind.startswith("float"):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="checkpoint folder of the candidate (our engine)")
    p.add_argument("--reference", default="transformers",
                   help="transformers (on --model), engine (our engine on --model) or a checkpoint folder")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (both sides)")
    p.add_argument("--dtype", default="float32", choices=sorted(TORCH_DTYPES), help="both sides")
    p.add_argument("--ppl-window", type=int, default=1024, help="tokens per perplexity window")
    p.add_argument("--prompts", type=Path, default=PROMPTS_FILE)
    p.add_argument("--text", type=Path, default=PLAIN_TEXT_FILE)
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="EngineConfig field of the candidate engine (repeatable)")
    p.add_argument("--reference-cache", type=Path, default=None, metavar="FILE",
                   help="reuse the reference side saved here by a run on the same inputs (written when absent)")
    p.add_argument("--reference-set", dest="reference_settings", action="append", default=[],
                   metavar="KEY=VALUE", help="EngineConfig field of a reference engine (repeatable)")
    return p


def runner_factories(args: argparse.Namespace, end_ids: Sequence[int]
                     ) -> tuple[Callable[[], Runner], Callable[[], Runner]]:
    def engine(path: str, pairs: Sequence[str]) -> Callable[[], Runner]:
        config = EngineConfig(**{"device": args.device, "dtype": args.dtype, **parse_settings(pairs)})
        return lambda: EngineRunner(path, config, end_ids)

    candidate = engine(args.model, args.settings)
    if args.reference == "transformers":
        return candidate, lambda: TransformersRunner(args.model, args.device, args.dtype, end_ids)
    path = args.model if args.reference == "engine" else args.reference
    return candidate, engine(path, args.reference_settings)


def evaluate(args: argparse.Namespace) -> dict:
    """Run both sides and build the report (what --json writes)."""
    start = time.perf_counter()
    tokenizer = load_tokenizer(args.model)
    items = load_items(args.prompts, args.limit)
    prompts = render_items(tokenizer, items)
    windows = text_windows(tokenizer, args.text, args.ppl_window)
    make_candidate, make_reference = runner_factories(args, tokenizer.eos_ids)
    cand = run_side(make_candidate, prompts, args.max_new_tokens, windows)
    ref = cached_side(args.reference_cache, make_reference, prompts, args.max_new_tokens, windows)
    rows = item_rows(items, prompts, cand, ref, tokenizer)
    return {
        "candidate": cand.name, "reference": ref.name, "max_new_tokens": args.max_new_tokens,
        "end_ids": list(tokenizer.eos_ids), "groups": group_summary(rows),
        "perplexity": perplexity_summary(cand, ref, windows, args.ppl_window),
        "seconds": {"candidate": {"generate": cand.generate_s, "score": cand.score_s},
                    "reference": {"generate": ref.generate_s, "score": ref.score_s},
                    "total": time.perf_counter() - start},
        "items": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    report = evaluate(args)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
