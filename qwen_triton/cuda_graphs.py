"""CUDA graphs of whole steps (embedding -> layers -> final norm -> float32 logits), replayed
over static input buffers: `DecodeGraphs`, one per bucketed batch size of decode steps, and
`PrefillGraphs`, one per (token bucket, sequence bucket) of short steps with prompt tokens.

A step runs the smallest bucket that holds it; the padded rows have slot -1 (no KV
write) and the padded sequences context length 0 (zero attention). Inputs reach the static device
buffers through pinned host buffers, two sets used in turn: with async scheduling
the host fills the next step's inputs while the previous step's copies may still be
queued, so a set is only rewritten once the step that used it has finished (the
engine waits for step N before it launches step N + 2).
"""
from __future__ import annotations

import torch

from .attention import AttentionMetadata, KVCache
from .host_batch import HostBatch
from .models.batch import ForwardBatch
from .transfer import to_device

# (name, dtype, value of padded rows): four per token, then one per sequence
_INPUTS = (("ids", torch.int64, 0), ("positions", torch.int64, 0), ("prompt_lens", torch.int64, 1),
           ("slots", torch.int64, -1), ("seq_lens", torch.int32, 0))


def graph_batch_sizes(max_batch: int) -> list[int]:
    """Bucketed batch sizes: 1, 2, 4, 8, then every multiple of 16, up to max_batch."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch, 16)) + [max_batch]
    return sorted(set(sizes))


class StaticInputs:
    """A graph's input buffers on the device (sized for its largest bucket) and the two pinned host sets they
    are filled through, in turn. Tokens: ids, positions, prompt_lens, slots [T]; sequences: seq_lens [B],
    tables [B, max_blocks], cu [B + 1] (query_start_loc)."""

    def __init__(self, max_tokens: int, max_seqs: int, max_blocks: int, device: torch.device):
        st = {name: torch.zeros(max_tokens, dtype=dtype, device=device) for name, dtype, _ in _INPUTS[:4]}
        st["seq_lens"] = torch.zeros(max_seqs, dtype=torch.int32, device=device)
        st["tables"] = torch.zeros(max_seqs, max_blocks, dtype=torch.int32, device=device)
        st["cu"] = torch.arange(max_seqs + 1, dtype=torch.int32, device=device)  # decode: one token each
        st["slots"].fill_(-1)
        self.static = st
        pin = device.type == "cuda"  # (the CPU: plain buffers, for tests of the padding without graphs)
        self.pinned = [{name: torch.zeros(t.shape, dtype=t.dtype, pin_memory=pin) for name, t in st.items()}
                       for _ in range(2)]
        self.turn = 0

    def fill(self, host: HostBatch, tokens: int, seqs: int, with_cu: bool) -> None:
        """Copy the step in, padded to `tokens` rows (slot -1: no KV write) and `seqs` sequences (context 0;
        with_cu: no query tokens either), then take the ids the previous step samples (host.input_patch)."""
        pinned, self.turn = self.pinned[self.turn], 1 - self.turn
        num_t, num_s, width = len(host.ids), host.num_seqs, host.tables.shape[1]
        for name, _, pad in _INPUTS:
            count, total = (num_s, seqs) if name == "seq_lens" else (num_t, tokens)
            view = pinned[name].numpy()
            view[:count] = getattr(host, name)
            view[count:total] = pad
            self.static[name][:total].copy_(pinned[name][:total], non_blocking=True)
        if with_cu:
            cu = pinned["cu"].numpy()
            cu[:num_s + 1] = host.cu
            cu[num_s + 1:seqs + 1] = host.cu[-1]
            self.static["cu"][:seqs + 1].copy_(pinned["cu"][:seqs + 1], non_blocking=True)
        pinned["tables"].numpy()[:num_s, :width] = host.tables
        self.static["tables"][:seqs, :width].copy_(pinned["tables"][:seqs, :width], non_blocking=True)
        if host.input_patch is not None:
            rows, ids = host.input_patch
            if len(rows) and rows[-1] == len(rows) - 1:  # rows 0 .. P - 1 (increasing): every row of a decode step
                self.static["ids"][:len(rows)] = ids
            else:
                self.static["ids"][to_device(rows, ids.device)] = ids

    def metadata(self, tokens: int, seqs: int, block_size: int, graph_query_len: int | None) -> AttentionMetadata:
        st = self.static
        return AttentionMetadata(
            query_start_loc=st["cu"][:seqs + 1], seq_lens=st["seq_lens"][:seqs], block_tables=st["tables"][:seqs],
            slot_mapping=st["slots"][:tokens], query_lens_cpu=[1] * seqs, seq_lens_cpu=[1] * seqs,
            block_size=block_size, graph_query_len=graph_query_len)

    def batch(self, meta: AttentionMetadata, tokens: int) -> ForwardBatch:
        st = self.static
        return ForwardBatch(st["ids"][:tokens], st["positions"][:tokens], st["prompt_lens"][:tokens], meta)


def capture(forward, keys: list, pool=None) -> dict:
    """Graphs of forward(key) for each key, the largest first so that the smaller reuse its memory pool:
    key -> (graph, its output tensor)."""
    graphs = {}
    for key in keys:
        for _ in range(2):  # compile kernels, create handles, outside the capture
            forward(key)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = forward(key)
        pool = graph.pool()
        graphs[key] = (graph, out)
    torch.cuda.synchronize()
    return graphs


class DecodeGraphs:
    """One graph per bucketed batch size of decode steps (one token per sequence)."""

    def __init__(self, model, kv_caches: list[KVCache], max_batch: int, max_blocks: int,
                 block_size: int, device: torch.device):
        self.model, self.kv_caches, self.block_size = model, kv_caches, block_size
        self.max_batch = max_batch
        self.inputs = StaticInputs(max_batch, max_batch, max_blocks, device)
        self.static = self.inputs.static
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _forward(self, size: int) -> torch.Tensor:  # float32 [size, vocab]
        batch = self.inputs.batch(self.inputs.metadata(size, size, self.block_size, None), size)
        return self.model.compute_logits(self.model(batch, self.kv_caches))

    def capture(self, sizes: list[int]) -> None:
        self.graphs = capture(self._forward, sorted(sizes, reverse=True))

    def bucket(self, num_seqs: int) -> int | None:
        return min((b for b in self.graphs if b >= num_seqs), default=None)

    def run(self, host: HostBatch, size: int) -> torch.Tensor:
        """Copy the step in and replay: float32 logits [B, vocab]."""
        self.inputs.fill(host, size, size, with_cu=False)
        graph, logits = self.graphs[size]
        graph.replay()
        return logits[:host.num_seqs]


# fine steps: a padded row costs compute (on an H200 a 144-token chunk after 1,984 cached tokens, replayed in the
# 256-token graph, took 9.9 ms against 6.2 ms for a 128-token prompt in the 128-token one)
PREFILL_TOKEN_BUCKETS = (16, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
PREFILL_SEQ_BUCKETS = (1, 2, 4, 8)


class PrefillGraphs:
    """Graphs of whole steps with prompt tokens (prefills, chunks after cached context, decodes beside them) of
    up to 512 tokens over up to 8 sequences: one per (token bucket, sequence bucket), so a short prompt costs
    a replay instead of hundreds of eager launches. Attention takes the backend's graph-safe path
    (AttentionMetadata.graph_query_len: the token bucket bounds every query length); the lm_head runs on each
    sequence's last row only: float32 logits [B, vocab], row i the last token of sequence i."""

    def __init__(self, model, kv_caches: list[KVCache], max_tokens: int, max_seqs: int, max_blocks: int,
                 block_size: int, device: torch.device):
        self.model, self.kv_caches, self.block_size = model, kv_caches, block_size
        self.tokens = [t for t in PREFILL_TOKEN_BUCKETS if t <= max_tokens] or [PREFILL_TOKEN_BUCKETS[0]]
        self.seqs = [b for b in PREFILL_SEQ_BUCKETS if b <= max_seqs] or [1]
        self.inputs = StaticInputs(self.tokens[-1], self.seqs[-1], max_blocks, device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _forward(self, key: tuple[int, int]) -> torch.Tensor:  # float32 [seqs, vocab]
        tokens, seqs = key
        meta = self.inputs.metadata(tokens, seqs, self.block_size, graph_query_len=tokens)
        hidden = self.model(self.inputs.batch(meta, tokens), self.kv_caches)  # [tokens, hidden]
        last = (meta.query_start_loc[1:] - 1).clamp_min(0).long()  # [seqs]: each sequence's last row
        return self.model.compute_logits(hidden[last])

    def capture(self) -> None:
        keys = sorted(((t, b) for t in self.tokens for b in self.seqs if b <= t), reverse=True)
        self.graphs = capture(self._forward, keys)

    def bucket(self, num_tokens: int, num_seqs: int) -> tuple[int, int] | None:
        fits = [key for key in self.graphs if key[0] >= num_tokens and key[1] >= num_seqs]
        return min(fits, default=None)

    def run(self, host: HostBatch, key: tuple[int, int]) -> torch.Tensor:
        """Copy the step in and replay: float32 logits [B, vocab] of each sequence's last token."""
        self.inputs.fill(host, key[0], key[1], with_cu=True)
        graph, logits = self.graphs[key]
        graph.replay()
        return logits[:host.num_seqs]
