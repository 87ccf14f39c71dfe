"""An independent plain-torch reference of the original Qwen (QWenLMHeadModel)
forward, written from /work/shared/reference/qwen-v1.md: full sequence, no KV
cache, straight from the checkpoint's own tensor names.

It shares no code with qwen_triton, so agreement checks our paged, fused model
(including logn attention and dynamic NTK past seq_length) against the spec.
"""
from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class QwenReference:
    def __init__(self, path: str):
        with open(os.path.join(path, "config.json")) as f:
            self.cfg = json.load(f)
        self.w = {k: v.float() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
        self.heads = self.cfg["num_attention_heads"]
        self.head_dim = self.cfg["kv_channels"]
        self.seq_length = self.cfg["seq_length"]

    def ntk_alpha(self, prompt_len: int) -> float:
        """Chosen once from the prompt's length, kept for the whole generation."""
        if not self.cfg["use_dynamic_ntk"]:
            return 1.0
        context_value = math.log2(prompt_len / self.seq_length) + 1
        return max(2 ** math.ceil(context_value) - 1, 1)

    def rotary(self, length: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.head_dim
        base = self.cfg["rotary_emb_base"] * alpha ** (d / (d - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, d, 2).float() / d))
        freqs = torch.outer(torch.arange(length).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # [L, d]
        return emb.cos(), emb.sin()

    def logn(self, length: int) -> torch.Tensor:
        """Query scale per 0-based position: log_seq_length(i) for 1-based i > seq_length."""
        s = self.seq_length
        on = self.cfg["use_logn_attn"]
        values = [math.log(i, s) if on and i > s else 1.0 for i in range(1, length + 1)]
        return torch.tensor(values)[:, None, None]  # [L, 1, 1]

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        eps = self.cfg["layer_norm_epsilon"]
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.w[name]

    @staticmethod
    def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return x * cos[:, None] + torch.cat((-b, a), dim=-1) * sin[:, None]

    @torch.no_grad()
    def logits(self, ids: list[int], prompt_len: int) -> torch.Tensor:
        """float32 [L, vocab] for the whole sequence; prompt_len fixes the NTK alpha."""
        w, length, h, d = self.w, len(ids), self.heads, self.head_dim
        cos, sin = self.rotary(length, self.ntk_alpha(prompt_len))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        x = w["transformer.wte.weight"][torch.tensor(ids)]
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"transformer.h.{i}."
            y = self.norm(x, p + "ln_1.weight")
            qkv = F.linear(y, w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"])
            q, k, v = (t.reshape(length, h, d) for t in qkv.chunk(3, dim=-1))
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            q = q * self.logn(length)
            scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
            probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            attn = torch.einsum("hqk,khd->qhd", probs, v).reshape(length, h * d)
            x = x + F.linear(attn, w[p + "attn.c_proj.weight"])
            y = self.norm(x, p + "ln_2.weight")
            mlp = F.linear(y, w[p + "mlp.w1.weight"]) * F.silu(F.linear(y, w[p + "mlp.w2.weight"]))
            x = x + F.linear(mlp, w[p + "mlp.c_proj.weight"])
        return F.linear(self.norm(x, "transformer.ln_f.weight"), w["lm_head.weight"])

    def greedy(self, prompt: list[int], max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
        """Greedy tokens and the logits [max_new_tokens, vocab] each was picked from."""
        ids, picked = list(prompt), []
        for _ in range(max_new_tokens):
            last = self.logits(ids, len(prompt))[-1]
            picked.append(last)
            ids.append(int(last.argmax()))
        return ids[len(prompt):], torch.stack(picked)
