"""What guided decoding costs per engine step: the grammar bitmask fill (host) and its application to
the logits, for K constrained rows in a batch of N sampling rows, next to the whole sampler step.

    python -m tools.guided_benchmark                       # Qwen's vocabulary (dashscope's qwen.tiktoken)
    python -m tools.guided_benchmark --tokenizer artifacts/gguf/<model> --batch 32 --constrained 0,1,16,32

Each constrained row's matcher sits at a different point of a JSON schema (start, inside a string,
before a key, inside a number), as rows of a real batch would. Times are the median and the best of
--repeat runs, in milliseconds, on the device --device names (logits float32 [N, vocab]).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from qwen_triton.chat import QwenTiktokenTokenizer, Tokenizer, load_tokenizer
from qwen_triton.guided import GrammarState, GuidedDecoding, apply_token_mask_, fill_token_mask
from qwen_triton.sampler import Sampler, SamplingRow
from qwen_triton.sampling_params import GuidedDecodingParams, SamplingParams

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "tags"]}
# where each constrained row's matcher stands (cycled over the rows)
PREFIXES = ("", '{"name": "Bo', '{"name": "Bob", ', '{"name": "Bob", "age": 4',
            '{"name": "Bob", "age": 42, "tags": ["a')


def timed_ms(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> tuple[float, float]:
    """(median, best) of `repeat` runs in milliseconds: on a shared machine the best is the cost itself,
    the median what a step pays among other processes."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def matchers(guided: GuidedDecoding, tokenizer: Tokenizer, count: int) -> list[GrammarState]:
    params = GuidedDecodingParams("json_schema", json.dumps(SCHEMA))
    states = []
    for i in range(count):
        state = guided.start(params, tokenizer.eos_ids)
        for token in tokenizer.encode(PREFIXES[i % len(PREFIXES)]):
            assert state.accept(token), "the prefix must fit the schema"
        states.append(state)
    return states


def measure(guided: GuidedDecoding, tokenizer: Tokenizer, batch: int, constrained: int, repeat: int,
            device: torch.device) -> dict[str, tuple[float, float]]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    vocab = guided.vocab_size
    logits = torch.randn(batch, vocab, device=device)  # float32 [N, vocab]
    states: list[GrammarState | None] = matchers(guided, tokenizer, constrained) + [None] * (batch - constrained)
    rows = [SamplingRow(SamplingParams(temperature=0.0), 0, [1], []) for _ in range(batch)]
    sampler = Sampler()
    result = {"sampler (no mask)": timed_ms(lambda: sampler(logits, rows), repeat, sync)}
    if constrained:
        # the mask writes the logits in place: masking them again and again costs what masking them once does
        mask = fill_token_mask(states, vocab)
        result["fill"] = timed_ms(lambda: fill_token_mask(states, vocab), repeat, sync)
        result["apply"] = timed_ms(lambda: apply_token_mask_(logits, mask), repeat, sync)
        result["sampler with mask"] = timed_ms(
            lambda: sampler(logits, rows, fill_token_mask(states, vocab)), repeat, sync)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", help="checkpoint folder whose tokenizer to use (default: Qwen's qwen.tiktoken)")
    p.add_argument("--vocab-size", type=int, default=151936, help="logits width (Qwen's padded vocabulary)")
    p.add_argument("--batch", type=int, default=32, help="sampling rows in the step")
    p.add_argument("--constrained", default="0,1,16", help="comma-separated counts of guided rows")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else QwenTiktokenTokenizer()
    guided = GuidedDecoding(lambda: tokenizer, args.vocab_size)
    start = time.perf_counter()
    guided.compile(GuidedDecodingParams("json_schema", json.dumps(SCHEMA)))
    print(f"vocabulary indexed and schema compiled in {time.perf_counter() - start:.2f} s "
          f"(threads: torch {torch.get_num_threads()})")
    device = torch.device(args.device)
    for k in (int(x) for x in args.constrained.split(",")):
        if not 0 <= k <= args.batch:
            raise SystemExit(f"--constrained {k} is outside [0, --batch {args.batch}]")
        times = measure(guided, tokenizer, args.batch, k, args.repeat, device)
        cells = ", ".join(f"{name} {median:.3f} / {best:.3f}" for name, (median, best) in times.items())
        print(f"{k:>3} of {args.batch} rows guided (ms, median / best): {cells}")


if __name__ == "__main__":
    main()
