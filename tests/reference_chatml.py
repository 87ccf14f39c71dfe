"""The original Qwen's tokenizer and make_context, restated independently for
tests (tiktoken over the real vocabulary; qwen_generation_utils.make_context)."""
from __future__ import annotations

import base64
import unicodedata

from qwen_triton.chat import ChatMessage
from qwen_triton.chat.tokenizer import default_qwen_vocab

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645

# Characters that the real Qwen vocabulary cuts across byte-level tokens (found with the vocab:
# e.g. "鱻" -> [b"\xe9\xb1", b"\xbb"], "🫠" -> [b"\xf0\x9f", b"\xab", b"\xa0"]).
SPLIT_TEXT = "鱻犇骉，🫠🪿🫎！Qwen 流式输出龘靐齉 and 𪚥 done."
# A reply with split characters in which no token repeats with two successors, so a scripted
# checkpoint (tests/scripted_checkpoint.py) can emit it by greedy decoding.
SCRIPTED_REPLY = "鱻犇骉，🫠！Qwen 流式输出龘靐齉 and 𪚥 done."


def reference_encoder():
    """An independent rebuild of the original tokenization_qwen.py encoder (tiktoken + NFC)."""
    import tiktoken

    pat = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
    ranks = {base64.b64decode(tok): int(rank)
             for tok, rank in (line.split() for line in default_qwen_vocab().splitlines() if line)}
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
    special = {name: i for i, name in enumerate(names, start=len(ranks))}
    enc = tiktoken.Encoding("QwenRef", pat_str=pat, mergeable_ranks=ranks, special_tokens=special)

    def encode(text: str) -> list[int]:  # tokenizer.encode(text, allowed_special=set())
        return enc.encode(unicodedata.normalize("NFC", text), allowed_special=set(), disallowed_special=())

    return encode


def reference_make_context(encode, query, history, system, max_window_size):
    """The original make_context(chat_format="chatml"), restated from qwen_generation_utils.py."""
    im_start_tokens, im_end_tokens, nl_tokens = [IM_START], [IM_END], encode("\n")

    def tokenize_str(role, content):
        return encode(role) + nl_tokens + encode(content)

    system_tokens = im_start_tokens + tokenize_str("system", system) + im_end_tokens
    context_tokens: list[int] = []
    for turn_query, turn_response in reversed(history):
        query_tokens = im_start_tokens + tokenize_str("user", turn_query) + im_end_tokens
        if turn_response is not None:
            response_tokens = im_start_tokens + tokenize_str("assistant", turn_response) + im_end_tokens
            next_context_tokens = nl_tokens + query_tokens + nl_tokens + response_tokens
        else:
            next_context_tokens = nl_tokens + query_tokens + nl_tokens
        current_context_size = len(system_tokens) + len(next_context_tokens) + len(context_tokens)
        if current_context_size < max_window_size:
            context_tokens = next_context_tokens + context_tokens
        else:
            break
    context_tokens = system_tokens + context_tokens
    context_tokens += (nl_tokens + im_start_tokens + tokenize_str("user", query) + im_end_tokens
                       + nl_tokens + im_start_tokens + encode("assistant") + nl_tokens)
    return context_tokens


def as_messages(system, history, query):
    msgs = [ChatMessage("system", system)] if system is not None else []
    for q, r in history:
        msgs.append(ChatMessage("user", q))
        if r is not None:
            msgs.append(ChatMessage("assistant", r))
    return msgs + [ChatMessage("user", query)]


HISTORY = [
    ("你好，请介绍一下你自己。", "我是通义千问，一个由阿里云开发的AI助手。🙂"),
    ("What is 2+2?", "2 + 2 = 4."),
    ("用一句话解释量子计算：鱻犇骉", "量子计算利用量子比特的叠加与纠缠来并行处理信息。"),
]


