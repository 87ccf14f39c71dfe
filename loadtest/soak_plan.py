"""What a soak sends: the seeded jobs of each round in the mix's proportions (greedy, sampled, chats,
cancellations, malformed requests from :mod:`.soak_catalogue`) and the KV-exhausting bursts."""
from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from typing import Any

from qwen_triton.serving import contract as c

from .soak_catalogue import Malformed
from .soak_client import PROTOCOLS, STREAMING, Cancel

KINDS = ("greedy", "sampled", "chat", "cancel", "malformed")
DEFAULT_MIX = "greedy=0.3,sampled=0.25,chat=0.25,cancel=0.1,malformed=0.1"
GREEDY_PROMPTS = ("Write a haiku about the sea.", "你好，请介绍一下你自己。", "List three prime numbers.",
                  "What is the capital of France?", "Translate 'good morning' into German.",
                  "Count from one to ten: 🙂")
BURST_PROMPT = "Tell me a very long story about a lighthouse keeper."
CHAT_TURNS = ("Hi! Who are you?", "Tell me a joke.", "Why is that funny?", "再讲一个笑话。", "Thanks, bye.")


@dataclass(frozen=True)
class Job:
    """One unit of work: a request (a chat is several, sent in turn) and what it must give."""

    index: int
    round: int
    kind: str
    protocol: str
    model: str
    body: dict[str, Any]
    cancel: Cancel | None = None
    entry: Malformed | None = None
    expect_text: str | None = None
    turns: tuple[str, ...] = ()


def parse_mix(text: str) -> dict[str, float]:
    """``greedy=0.3,sampled=0.25,...`` -> shares of KINDS (normalised; a kind left out gets 0)."""
    mix = {k: 0.0 for k in KINDS}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name.strip() not in mix:
            raise argparse.ArgumentTypeError(f"unknown kind {name!r} in --mix (kinds: {', '.join(KINDS)})")
        mix[name.strip()] = float(value)
    total = sum(mix.values())
    if total <= 0:
        raise argparse.ArgumentTypeError("--mix gives no kind a share")
    return {k: v / total for k, v in mix.items()}


class Planner:
    """The seeded jobs of each round, and the bursts. ``limits``: the server's KV pool and lengths."""

    def __init__(self, args: argparse.Namespace, refs: dict[str, str], catalogue: tuple[Malformed, ...],
                 limits: dict[str, Any]):
        self.args, self.refs, self.limits = args, refs, limits
        self.catalogue = list(catalogue)
        random.Random(args.seed).shuffle(self.catalogue)
        self.malformed_sent = 0
        self.long_tokens = min(limits["max_output_len"], 128)

    @staticmethod
    def greedy_body(prompt: str, tokens: int, forced: bool = False, top_k: bool = False) -> dict[str, Any]:
        """A greedy request (temperature 0, or top_k 1), the prompt left out of the reply."""
        body = {c.TEXT_INPUT: prompt, c.MAX_TOKENS: tokens, c.EXCLUDE_INPUT_IN_OUTPUT: True}
        body.update({c.TOP_K: 1} if top_k else {c.TEMPERATURE: 0.0})
        return {**body, c.MIN_LENGTH: tokens} if forced else body

    def round_jobs(self, rnd: int, first: int) -> list[Job]:
        """The jobs of round ``rnd`` (numbered from ``first``): the kinds in the mix's proportions, shuffled."""
        rng = random.Random(f"{self.args.seed}/{rnd}")
        n, mix = self.args.requests_per_round, self.args.mix
        quota = {k: math.floor(n * share) for k, share in mix.items()}
        for k in sorted(mix, key=lambda k: n * mix[k] - quota[k], reverse=True)[:n - sum(quota.values())]:
            quota[k] += 1
        kinds = [k for k, q in quota.items() for _ in range(q)]
        rng.shuffle(kinds)
        return [self._job(rng, kind, first + i, rnd) for i, kind in enumerate(kinds)]

    def _job(self, rng: random.Random, kind: str, index: int, rnd: int) -> Job:
        model = c.BLS if rng.random() < self.args.bls_share else c.ENSEMBLE
        protocol = rng.choice(STREAMING if kind == "cancel" else PROTOCOLS)
        if kind == "malformed" and self.catalogue:
            entry = self.catalogue[self.malformed_sent % len(self.catalogue)]
            self.malformed_sent += 1
            return Job(index, rnd, kind, entry.protocol, entry.model, {}, entry=entry)
        if kind == "greedy" or (kind == "malformed" and not self.catalogue):
            prompt = rng.choice(GREEDY_PROMPTS)
            body = self.greedy_body(prompt, self.args.greedy_tokens, top_k=rng.random() < 0.25)
            return Job(index, rnd, "greedy", protocol, model, body, expect_text=self.refs[prompt])
        sampling = {c.TEMPERATURE: rng.choice([0.7, 1.0]), c.TOP_P: 0.9, c.TOP_K: 40,
                    c.RANDOM_SEED: rng.randrange(2 ** 31), c.EXCLUDE_INPUT_IN_OUTPUT: True}
        if kind == "chat":
            turns = tuple(rng.sample(CHAT_TURNS, rng.randint(2, 3)))
            return Job(index, rnd, kind, protocol, model, {**sampling, c.MAX_TOKENS: rng.randint(4, 24)}, turns=turns)
        if kind == "cancel":
            cancel = (Cancel(after_chunks=rng.randint(1, 5)) if rng.random() < 0.5
                      else Cancel(after_ms=rng.uniform(50, 500)))
            body = {**sampling, c.TEXT_INPUT: BURST_PROMPT, c.MAX_TOKENS: self.long_tokens,
                    c.MIN_LENGTH: self.long_tokens}
            return Job(index, rnd, kind, protocol, model, body, cancel=cancel)
        body = {**sampling, c.TEXT_INPUT: rng.choice(GREEDY_PROMPTS), c.MAX_TOKENS: rng.randint(4, 32)}
        return Job(index, rnd, "sampled", protocol, model, body)

    def burst(self, rnd: int, first: int) -> list[Job]:
        """One burst: ``limits["burst_size"]`` long forced greedy replies over every protocol."""
        body = self.greedy_body(BURST_PROMPT, self.limits["burst_tokens"], forced=True)
        return [Job(first + i, rnd, "burst", PROTOCOLS[i % len(PROTOCOLS)], (c.ENSEMBLE, c.BLS)[i % 2], body,
                    expect_text=self.refs[BURST_PROMPT]) for i in range(self.limits["burst_size"])]
