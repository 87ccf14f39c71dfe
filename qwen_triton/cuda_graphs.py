"""CUDA graphs for decode steps: one graph per bucketed batch size for a whole step
(embedding -> layers -> final norm -> float32 logits), replayed over static input buffers.

A batch of B sequences runs the smallest bucket >= B; the padded rows have slot -1
(no KV write) and context length 0 (zero attention). Inputs reach the static device
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

_INPUTS = (("ids", torch.int64, 0), ("positions", torch.int64, 0), ("prompt_lens", torch.int64, 1),
           ("slots", torch.int64, -1), ("seq_lens", torch.int32, 0))  # (name, dtype, value of padded rows)


def graph_batch_sizes(max_batch: int) -> list[int]:
    """Bucketed batch sizes: 1, 2, 4, 8, then every multiple of 16, up to max_batch."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch, 16)) + [max_batch]
    return sorted(set(sizes))


class DecodeGraphs:
    """The captured decode graphs of one model runner and their static buffers."""

    def __init__(self, model, kv_caches: list[KVCache], max_batch: int, max_blocks: int,
                 block_size: int, device: torch.device):
        self.model, self.kv_caches, self.block_size = model, kv_caches, block_size
        self.max_batch = max_batch
        self.static = {name: torch.zeros(max_batch, dtype=dtype, device=device) for name, dtype, _ in _INPUTS}
        self.static["tables"] = torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device)
        self.static["slots"].fill_(-1)
        self.pinned = [{name: torch.zeros(t.shape, dtype=t.dtype).pin_memory() for name, t in self.static.items()}
                       for _ in range(2)]
        self.turn = 0
        self.cu = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _batch(self, size: int) -> ForwardBatch:
        st = self.static
        meta = AttentionMetadata(
            query_start_loc=self.cu[:size + 1], seq_lens=st["seq_lens"][:size],
            block_tables=st["tables"][:size], slot_mapping=st["slots"][:size],
            query_lens_cpu=[1] * size, seq_lens_cpu=[1] * size, block_size=self.block_size,
        )
        return ForwardBatch(st["ids"][:size], st["positions"][:size], st["prompt_lens"][:size], meta)

    def _forward(self, size: int) -> torch.Tensor:  # float32 [size, vocab]
        return self.model.compute_logits(self.model(self._batch(size), self.kv_caches))

    def capture(self, sizes: list[int]) -> None:
        """Capture the largest first so that the smaller graphs reuse its memory pool."""
        pool = None
        for size in sorted(sizes, reverse=True):
            for _ in range(2):  # compile kernels, create handles, outside the capture
                self._forward(size)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._forward(size)
            pool = graph.pool()
            self.graphs[size] = (graph, logits)
        torch.cuda.synchronize()

    def bucket(self, num_seqs: int) -> int | None:
        return min((b for b in self.graphs if b >= num_seqs), default=None)

    def run(self, host: HostBatch, size: int) -> torch.Tensor:
        """Copy the step in (padding rows past B harmless), take the ids the previous step samples
        (host.input_patch), and replay: float32 logits [B, vocab]."""
        num = host.num_seqs
        width = host.tables.shape[1]
        pinned, self.turn = self.pinned[self.turn], 1 - self.turn
        for name, _, pad in _INPUTS:
            view = pinned[name].numpy()
            view[:num] = getattr(host, name)
            view[num:size] = pad
            self.static[name][:size].copy_(pinned[name][:size], non_blocking=True)
        pinned["tables"].numpy()[:num, :width] = host.tables
        self.static["tables"][:size, :width].copy_(pinned["tables"][:size, :width], non_blocking=True)
        if host.input_patch is not None:
            rows, tokens = host.input_patch
            self.static["ids"][torch.from_numpy(rows).to(tokens.device, non_blocking=True)] = tokens
        graph, logits = self.graphs[size]
        graph.replay()
        return logits[:num]
