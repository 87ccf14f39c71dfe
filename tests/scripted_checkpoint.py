"""A Qwen2 checkpoint with the real Qwen vocabulary whose greedy decoding
emits a chosen reply: used to stream known Chinese and emoji text end to end.

How: one layer whose attention and MLP outputs are zero, so the last hidden
state is the (normalised) embedding of the current token; lm_head row
next(t) is that embedding, so greedy decoding follows the chain
"\\n" (end of "<|im_start|>assistant\\n") -> reply[0] -> ... -> <|im_end|>.
Logit of the right successor: hidden (64); of any other chain row ~ N(0, 64).
"""
from __future__ import annotations

import os

import torch

from qwen_triton.chat import QwenTiktokenTokenizer
from qwen_triton.chat.tokenizer import default_qwen_vocab

HIDDEN = 64
VOCAB = 151936


def write_scripted_qwen2(path: str, reply: str, seed: int = 0) -> list[int]:
    """Write the checkpoint; return the reply's token ids."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = QwenTiktokenTokenizer()
    reply_ids = tok.encode(reply)
    chain = [tok.encode("\n")[0]] + reply_ids + [tok.im_end_id]
    successor: dict[int, int] = {}
    for cur, nxt in zip(chain, chain[1:]):
        if successor.setdefault(cur, nxt) != nxt:
            raise ValueError(f"token {cur} needs two successors; choose a reply without that repeat")
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, eos_token_id=tok.im_end_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()  # layers add nothing: hidden state = embedding of the current token
        emb = model.model.embed_tokens.weight
        emb.normal_()
        unit = emb / emb.pow(2).mean(-1, keepdim=True).sqrt()  # what the final RMSNorm makes of it
        model.lm_head.weight.zero_()
        for cur, nxt in successor.items():
            model.lm_head.weight[nxt] = unit[cur]
    model.save_pretrained(path)
    with open(os.path.join(path, "qwen.tiktoken"), "wb") as f:
        f.write(default_qwen_vocab())
    return reply_ids


