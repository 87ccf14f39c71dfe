"""What the load test sends: seeded, reproducible workloads, with nothing downloaded.

* ``fixed`` -- every request has ``input_len`` prompt tokens and exactly ``output_len`` output tokens
  (``min_length = max_tokens``, so an end token cannot cut a reply short): the shape of the targets
  (128 in / 128 out).
* ``sharegpt`` -- lengths drawn from a seeded distribution shaped like ShareGPT's as vLLM's serving
  benchmark uses it (prompt 4..1024 tokens, prompt + reply <= 2048; the vLLM paper gives means of 161
  input and 338 output tokens): log-normal prompt lengths (median 80, heavy tail) and log-normal reply
  lengths (median 230), each forced like the dataset's reply lengths are with ``ignore_eos``.
* ``multiturn`` -- chat sessions sent as ``messages``: a session has 2..5 turns, every turn sends the whole
  conversation so far (the assistant's real replies included) plus a new user message, so prompts grow
  turn by turn as in a chat front end.

Prompt text is built from common English words that are each exactly one token in Qwen's vocabulary
(``WORDS``; separated by spaces each stays one token), so a text prompt of n words is n tokens.  For chat
``messages`` the count adds the ChatML template's tokens (5 per message, 11 for the default system prompt,
3 for the assistant header): exact for our preprocessing of Qwen's template, an estimate for another.

Every user draws from its own ``random.Random`` seeded by (seed, level, user), so a run is reproducible
request by request for each user.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qwen_triton.serving import contract as c

# Each is one token in Qwen's (cl100k-like) vocabulary, alone and after a space (checked by the tests
# when the tokenizer is at hand).
WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
    "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you", "were",
    "her", "she", "there", "one", "all", "we", "their", "has", "been", "would", "will", "more", "if", "no",
    "when", "what", "so", "who", "can", "out", "said", "about", "other", "time", "some", "them", "two",
    "into", "these", "up", "only", "may", "could", "new", "than", "first", "like", "then", "its", "also",
    "any", "over", "after", "me", "my", "man", "our", "even", "most", "made", "did", "many", "before",
    "must", "through", "back", "years", "where", "much", "your", "way", "well", "down", "should", "because",
    "each", "just", "those", "people", "how", "too", "little", "state", "good", "very", "make", "world",
    "still", "own", "see", "men", "work", "long", "here", "get", "both", "between", "life", "being", "under",
    "never", "day", "same", "another", "know", "while", "last", "might", "us", "great", "old", "year", "off",
    "come", "since", "against", "go", "came", "right", "used", "take", "three", "states", "few", "house",
    "use", "during", "without", "again", "place", "around", "however", "home", "small", "found", "thought",
    "went", "say", "part", "once", "general", "high", "upon", "school", "every", "does", "got", "left",
    "number", "course", "war", "until", "always", "away", "something", "fact", "though", "water", "less",
    "public", "put", "think", "almost", "hand", "far", "took", "head", "yet", "government", "system",
    "better", "set", "nothing", "night", "end", "why", "called", "eyes", "find", "going", "look", "later",
    "point", "next", "program", "city", "business", "give", "group", "young", "days", "let", "room", "side",
    "social", "given", "present", "order", "national", "possible", "rather", "second", "face", "per",
    "among", "form", "important", "often", "things", "early", "white", "case", "large", "big", "need",
    "four", "within", "felt", "along", "children", "best", "church", "ever", "least", "power", "development",
    "light", "thing", "family", "interest", "want", "members", "mind", "country", "area", "others", "done",
    "turned", "although", "open", "service", "problem", "kind", "different", "thus", "door", "help", "sense",
    "whole", "matter", "perhaps", "times", "law", "human", "line", "above", "name", "example", "action",
    "company", "hands", "local", "show", "five", "history", "whether", "either", "today", "act", "taken",
    "past", "quite", "anything", "having", "seen", "death", "experience", "body", "word", "half", "really",
    "week", "car", "field", "money", "words", "already", "information", "tell", "college", "shall",
)

# ChatML as our preprocessing renders it: <|im_start|>role\ncontent<|im_end|>\n per message,
# the default system prompt "You are a helpful assistant." (6 tokens), then <|im_start|>assistant\n.
CHAT_TOKENS_PER_MESSAGE = 5
CHAT_DEFAULT_SYSTEM_TOKENS = 6 + CHAT_TOKENS_PER_MESSAGE
CHAT_ASSISTANT_HEADER_TOKENS = 3

# Prompts that ask for something, so the text reads like a request rather than word salad.
# Every word of them is one token too.
OPENERS = ("Please explain", "Write a story about", "Describe", "Tell me about", "Translate",
           "Give me a list of", "Why is", "How do I", "Compare", "What is", "Write a poem about")


def make_text(rng: random.Random, n_tokens: int) -> str:
    """A prompt of exactly n_tokens tokens (n_tokens >= 1) of random common words."""
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n_tokens)))


@dataclass(frozen=True)
class Turn:
    """One request: ``text`` or chat ``messages``, ``max_tokens``, and ``forced`` (min_length too)."""

    max_tokens: int
    input_tokens: int
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    forced: bool = True

    def inputs(self) -> dict[str, Any]:
        """{ensemble input name: value} (names from the contract)."""
        out: dict[str, Any] = {c.MAX_TOKENS: int(self.max_tokens)}
        if self.messages is not None:
            out[c.MESSAGES] = json.dumps(list(self.messages), ensure_ascii=False)
        else:
            out[c.TEXT_INPUT] = self.text or ""
        if self.forced:
            out[c.MIN_LENGTH] = int(self.max_tokens)
        return out


class Session:
    """The turns of one conversation; ``next_turn(previous reply)`` gives None when it is over."""

    def next_turn(self, reply: str | None) -> Turn | None:  # pragma: no cover - interface
        raise NotImplementedError


class _OneShot(Session):
    def __init__(self, turn: Turn):
        self._turn: Turn | None = turn

    def next_turn(self, reply: str | None) -> Turn | None:
        turn, self._turn = self._turn, None
        return turn


def _lognormal_int(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma)))))


@dataclass
class Workload:
    """Base: ``session(rng)`` starts a conversation; ``describe()`` says what it is, for the report."""

    name: str = "workload"

    def session(self, rng: random.Random) -> Session:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class FixedWorkload(Workload):
    input_len: int = 128
    output_len: int = 128
    name: str = "fixed"

    def session(self, rng: random.Random) -> Session:
        return _OneShot(Turn(self.output_len, self.input_len, text=make_text(rng, self.input_len)))


@dataclass
class ShareGPTWorkload(Workload):
    """Log-normal lengths shaped like ShareGPT's; ``scale`` shrinks both (e.g. 0.25 for a CPU run)."""

    input_median: float = 80.0
    input_sigma: float = 1.1
    output_median: float = 230.0
    output_sigma: float = 0.9
    max_input: int = 1024
    max_output: int = 1024
    max_total: int = 2048
    scale: float = 1.0
    name: str = "sharegpt"

    def lengths(self, rng: random.Random) -> tuple[int, int]:
        n_in = _lognormal_int(rng, self.input_median * self.scale, self.input_sigma, 4, self.max_input)
        n_out = _lognormal_int(rng, self.output_median * self.scale, self.output_sigma, 4, self.max_output)
        return n_in, max(4, min(n_out, self.max_total - n_in))

    def session(self, rng: random.Random) -> Session:
        n_in, n_out = self.lengths(rng)
        opener = rng.choice(OPENERS)
        words = len(opener.split())  # each opener word is one token too
        text = opener + " " + make_text(rng, max(1, n_in - words))
        return _OneShot(Turn(n_out, max(n_in, words + 1), text=text))


class _ChatSession(Session):
    def __init__(self, wl: MultiTurnWorkload, rng: random.Random):
        self.wl = wl
        self.rng = rng
        self.turns = rng.randint(wl.min_turns, wl.max_turns)
        self.done = 0
        self.messages: list[dict[str, str]] = []
        self.tokens = CHAT_DEFAULT_SYSTEM_TOKENS + CHAT_ASSISTANT_HEADER_TOKENS
        self.pending_reply_tokens = 0

    def next_turn(self, reply: str | None) -> Turn | None:
        wl, rng = self.wl, self.rng
        if self.done:
            # the reply's token count is not known here; each generated token is roughly one word-sized
            # token of text, so count the tokens asked for (replies are forced to that length)
            self.messages.append({"role": "assistant", "content": reply or ""})
            self.tokens += self.pending_reply_tokens + CHAT_TOKENS_PER_MESSAGE
        if self.done >= self.turns:
            return None
        n_user = _lognormal_int(rng, wl.first_median if not self.done else wl.followup_median,
                                wl.sigma, 2, wl.max_input)
        n_out = _lognormal_int(rng, wl.output_median, wl.sigma, 4, wl.max_output)
        if self.tokens + n_user + CHAT_TOKENS_PER_MESSAGE + n_out > wl.max_total:
            return None  # the conversation would outgrow the context: end it
        opener = rng.choice(OPENERS)
        content = opener + " " + make_text(rng, max(1, n_user - len(opener.split())))
        self.messages.append({"role": "user", "content": content})
        self.tokens += max(n_user, len(opener.split()) + 1) + CHAT_TOKENS_PER_MESSAGE
        self.pending_reply_tokens = n_out
        self.done += 1
        return Turn(n_out, self.tokens, messages=tuple(dict(m) for m in self.messages))


@dataclass
class MultiTurnWorkload(Workload):
    """Chat sessions of min_turns..max_turns turns sent as ``messages``; each turn re-sends the history."""

    min_turns: int = 2
    max_turns: int = 5
    first_median: float = 60.0
    followup_median: float = 24.0
    output_median: float = 96.0
    sigma: float = 0.6
    max_input: int = 512
    max_output: int = 512
    max_total: int = 2048
    name: str = "multiturn"

    def session(self, rng: random.Random) -> Session:
        return _ChatSession(self, rng)


WORKLOADS: dict[str, type[Workload]] = {
    "fixed": FixedWorkload,
    "sharegpt": ShareGPTWorkload,
    "multiturn": MultiTurnWorkload,
}


def make_workload(name: str, **params: Any) -> Workload:
    """A workload by name; params are its fields (unknown ones raise TypeError); None values are dropped."""
    try:
        cls = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}") from None
    known = set(cls.__dataclass_fields__)
    params = {k: v for k, v in params.items() if v is not None}
    unknown = set(params) - known
    if unknown:
        raise TypeError(f"workload {name} has no setting {', '.join(sorted(unknown))}; it has "
                        f"{', '.join(sorted(known - {'name'}))}")
    return cls(**params)


def user_rng(seed: int, level: int, user: int) -> random.Random:
    """The random source of one user in one level (string seeds hash stably across processes)."""
    return random.Random(f"qwen-triton-loadtest/{seed}/{level}/{user}")


def sample_turns(workload: Workload, seed: int, n: int) -> Iterator[Turn]:
    """The first n turns one user would send (replies are random words of the forced length): for tests
    and previews."""
    rng = user_rng(seed, 0, 0)
    session: Session | None = None
    produced = 0
    while produced < n:
        if session is None:
            session = workload.session(rng)
            reply = None
        turn = session.next_turn(reply)
        if turn is None:
            session = None
            continue
        reply = make_text(rng, turn.max_tokens)  # stands in for a forced reply of that many tokens
        produced += 1
        yield turn


__all__ = ["WORDS", "FixedWorkload", "MultiTurnWorkload", "Session", "ShareGPTWorkload", "Turn", "Workload",
           "make_text", "make_workload", "sample_turns", "user_rng"]
