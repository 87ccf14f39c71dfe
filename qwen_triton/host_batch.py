"""One step's inputs on the host: the scheduled chunks packed into numpy arrays (`prepare_host`), moved
to the device as a ForwardBatch. Plain numpy until `to_device`; a tensor-parallel step sends the same
HostBatch to every rank (qwen_triton/distributed)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .attention import AttentionMetadata
from .models.batch import ForwardBatch
from .scheduler import ScheduledSeq
from .transfer import to_device


@dataclass
class HostBatch:
    """One step's inputs as numpy arrays (T tokens over B sequences), built with
    vectorised numpy instead of per-token Python loops.

    ids, positions, prompt_lens, slots: int64 [T]; seq_lens: int32 [B];
    tables: int32 [B, width]; cu: int32 [B + 1] (query_start_loc).
    """

    ids: np.ndarray
    positions: np.ndarray
    prompt_lens: np.ndarray
    slots: np.ndarray
    seq_lens: np.ndarray
    tables: np.ndarray
    cu: np.ndarray
    query_lens: list[int]
    # async scheduling: packed rows (int64 [P]) whose input ids are tokens the previous step samples, and
    # those tokens (int64 [P], on the device); None when every id is known (always under tensor parallelism)
    input_patch: tuple[np.ndarray, torch.Tensor] | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def is_decode_only(self) -> bool:
        return len(self.ids) == len(self.query_lens)

    def to_device(self, device: torch.device, block_size: int) -> ForwardBatch:
        def dev(a: np.ndarray) -> torch.Tensor:
            return to_device(a, device)

        meta = AttentionMetadata(
            query_start_loc=dev(self.cu), seq_lens=dev(self.seq_lens), block_tables=dev(self.tables),
            slot_mapping=dev(self.slots), query_lens_cpu=self.query_lens,
            seq_lens_cpu=self.seq_lens.tolist(), block_size=block_size,
        )
        ids = dev(self.ids)
        if self.input_patch is not None:
            rows, tokens = self.input_patch
            ids[dev(rows)] = tokens
        return ForwardBatch(input_ids=ids, positions=dev(self.positions),
                            prompt_lens=dev(self.prompt_lens), attn=meta)


def prepare_host(scheduled: list[ScheduledSeq], block_size: int) -> HostBatch:
    num_seqs = len(scheduled)
    query_lens = [s.num_tokens for s in scheduled]
    q_lens = np.array(query_lens, dtype=np.int64)  # [B]
    starts = np.fromiter((s.start_pos for s in scheduled), np.int64, num_seqs)  # [B]
    prompts = np.fromiter((len(s.prompt_token_ids) for s in scheduled), np.int64, num_seqs)
    cu = np.zeros(num_seqs + 1, dtype=np.int32)
    np.cumsum(q_lens, out=cu[1:])
    total = int(cu[-1])
    ids = np.fromiter(itertools.chain.from_iterable(s.token_ids for s in scheduled), np.int64, total)
    seq_of = np.repeat(np.arange(num_seqs), q_lens)  # [T], each token's sequence
    positions = np.arange(total, dtype=np.int64) - cu[:-1][seq_of] + starts[seq_of]  # [T]
    table_lens = np.fromiter((len(s.block_table) for s in scheduled), np.int64, num_seqs)  # [B]
    width = int(table_lens.max())
    tables = np.zeros((num_seqs, width), dtype=np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(s.block_table for s in scheduled), np.int32,
                       int(table_lens.sum()))
    tables[np.arange(width)[None, :] < table_lens[:, None]] = flat  # row-major fill of each prefix
    slots = tables[seq_of, positions // block_size].astype(np.int64) * block_size + positions % block_size
    return HostBatch(ids, positions, prompts[seq_of], slots, (starts + q_lens).astype(np.int32),
                     tables, cu, query_lens)


def dummy_prefill(lens: list[int], block_size: int) -> HostBatch:
    """Fresh prompts of the given lengths (token id 0) over consecutive blocks."""
    total = sum(lens)
    cu = np.zeros(len(lens) + 1, dtype=np.int32)
    np.cumsum(lens, out=cu[1:])
    seq_of = np.repeat(np.arange(len(lens)), lens)
    positions = np.arange(total, dtype=np.int64) - cu[:-1][seq_of]
    width = max(-(-n // block_size) for n in lens)
    first = np.cumsum([0] + [-(-n // block_size) for n in lens[:-1]])
    tables = (first[:, None] + np.arange(width)[None, :]).astype(np.int32)
    slots = tables[seq_of, positions // block_size].astype(np.int64) * block_size + positions % block_size
    return HostBatch(np.zeros(total, np.int64), positions, np.asarray(lens, np.int64)[seq_of], slots,
                     np.asarray(lens, np.int32), tables, cu, list(lens))
