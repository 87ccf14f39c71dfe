"""The only module that touches the device: packs a step's tokens into
tensors, runs the model over the paged KV cache, and samples."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .attention import AttentionMetadata, get_attention_backend
from .config import EngineConfig, ModelConfig
from .models import load_model
from .models.batch import ForwardBatch
from .sampler import Sampler, SamplingRow
from .outputs import SampledToken
from .scheduler import ScheduledSeq, SchedulerOutput

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DeviceSettings:
    device: torch.device
    dtype: torch.dtype


def resolve_device(config: EngineConfig) -> DeviceSettings:
    """"auto" picks the GPU when there is one; dtype "auto" is bf16 there, fp32 on the CPU."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if config.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif config.dtype in _DTYPES:
        dtype = _DTYPES[config.dtype]
    else:
        raise ValueError(f"unknown dtype {config.dtype!r}; expected auto, {', '.join(_DTYPES)}")
    return DeviceSettings(device, dtype)


def kv_block_bytes(model: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes over all layers (keys and values)."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * elem


class ModelRunner:
    """Holds the model weights and the KV cache; runs one scheduled step."""

    def __init__(self, model_path: str, model_config: ModelConfig, config: EngineConfig,
                 max_model_len: int):
        self.model_config = model_config
        self.config = config
        self.settings = resolve_device(config)
        self.block_size = config.block_size
        backend = get_attention_backend(config.attention_backend, self.settings.device)
        self.model = load_model(model_path, model_config, self.settings.dtype,
                                self.settings.device, backend)
        self.num_blocks = self._pool_size(max_model_len)
        self.kv_caches = self._allocate_kv_cache(self.num_blocks)
        self.sampler = Sampler()

    # -- setup ---------------------------------------------------------------

    def _pool_size(self, max_model_len: int) -> int:
        cfg = self.config
        if cfg.num_kv_blocks is not None:
            return cfg.num_kv_blocks
        per_block = kv_block_bytes(self.model_config, cfg.block_size, self.settings.dtype)
        if self.settings.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.settings.device)
            budget = int(free * cfg.kv_cache_memory_fraction)
        else:
            wanted = cfg.max_num_seqs * -(-max_model_len // cfg.block_size) * per_block
            budget = min(wanted, cfg.kv_cache_max_bytes)
        num = budget // per_block
        if num < 1:
            raise ValueError("no room for a single KV block; lower block_size or free memory")
        return num

    def _allocate_kv_cache(self, num_blocks: int) -> list[torch.Tensor]:
        m = self.model_config
        shape = (2, num_blocks, self.block_size, m.num_kv_heads, m.head_dim)
        return [torch.zeros(shape, dtype=self.settings.dtype, device=self.settings.device)
                for _ in range(m.num_layers)]

    # -- one step ------------------------------------------------------------

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[str, SampledToken]:
        """Compute every scheduled chunk; sample for chunks that reach their end."""
        batch = self._prepare(out.scheduled)
        hidden = self.model(batch, self.kv_caches)  # [T, hidden]
        sampling = [s for s in out.scheduled if s.samples]
        if not sampling:
            return {}
        ends = batch.attn.query_start_loc[1:] - 1  # last packed token of each sequence
        rows_idx = torch.tensor([i for i, s in enumerate(out.scheduled) if s.samples],
                                device=ends.device)
        logits = self.model.compute_logits(hidden[ends[rows_idx].long()])  # [N, vocab] float32
        rows = [SamplingRow(s.params, s.seed, s.prompt_token_ids, s.output_token_ids)
                for s in sampling]
        tokens = self.sampler(logits, rows)
        return {s.request_id: t for s, t in zip(sampling, tokens)}

    def _prepare(self, scheduled: list[ScheduledSeq]) -> ForwardBatch:
        bs = self.block_size
        ids, positions, prompt_lens, slots = [], [], [], []
        query_lens, seq_lens = [], []
        for s in scheduled:
            pos = range(s.start_pos, s.start_pos + s.num_tokens)
            ids.extend(s.token_ids)
            positions.extend(pos)
            prompt_lens.extend([len(s.prompt_token_ids)] * s.num_tokens)
            slots.extend(s.block_table[p // bs] * bs + p % bs for p in pos)
            query_lens.append(s.num_tokens)
            seq_lens.append(s.start_pos + s.num_tokens)
        width = max(len(s.block_table) for s in scheduled)
        tables = [s.block_table + [0] * (width - len(s.block_table)) for s in scheduled]
        dev = self.settings.device
        cu = [0]
        for n in query_lens:
            cu.append(cu[-1] + n)
        meta = AttentionMetadata(
            query_start_loc=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_lens_cpu=query_lens,
            seq_lens_cpu=seq_lens,
            block_size=bs,
        )
        return ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.int64, device=dev),
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            prompt_lens=torch.tensor(prompt_lens, dtype=torch.int64, device=dev),
            attn=meta,
        )
