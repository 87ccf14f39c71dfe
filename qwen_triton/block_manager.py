"""The KV pool's bookkeeping: which fixed-size blocks are free, which are used and
by how many sequences, and which hold a reusable prefix (automatic prefix caching).
Plain Python; the tensors live in the model runner.

A block full of computed tokens is registered under a key: a digest of its
tokens chained to the key of the block before it (and a salt for what else
shapes the KV, see `Sequence.cache_salt`), so equal keys mean equal prefixes
and equal K/V. A later sequence whose prompt starts with the same blocks takes
them by reference instead of computing them again. A block nobody uses any more
keeps its contents and key and stays findable until its memory is needed:
allocation takes never-registered free blocks first, then evicts registered
ones least recently freed first.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence as Seq

import numpy as np

BlockKey = bytes  # 16-byte BLAKE2b digest of (the parent's key, or the salt at the start; the block's token ids)


class OutOfBlocksError(RuntimeError):
    """Raised by `allocate` when asked for more blocks than are free."""


def chain_keys(parent: BlockKey | None, token_ids: Seq[int], block_size: int, salt: int = 0) -> list[BlockKey]:
    """Keys of the consecutive full blocks of `token_ids` (a trailing partial block has none), the first
    chained to `parent` (None: the sequence's start, keyed by `salt`, which separates sequences whose K/V
    differ for the same tokens)."""
    full = len(token_ids) // block_size
    ids = np.asarray(token_ids[:full * block_size], dtype=np.int64).reshape(full, block_size)  # [blocks, size]
    key = parent if parent is not None else salt.to_bytes(8, "little", signed=True)
    keys: list[BlockKey] = []
    for row in ids:
        key = hashlib.blake2b(key + row.tobytes(), digest_size=16).digest()
        keys.append(key)
    return keys


class BlockManager:
    """Allocates and frees block ids in [0, num_blocks), counting references.

    `allocate` hands out blocks with one reference; `take` adds a reference to
    blocks found by `match`; `free` drops one reference per block and returns a
    block to the pool at zero. `register` records a full block's key (when
    `caching` is on). Freeing a block that is not in use is an error.
    """

    def __init__(self, num_blocks: int, block_size: int, caching: bool = False):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.caching = caching
        self._refs = [0] * num_blocks
        self._empty: deque[int] = deque(range(num_blocks))  # free, holding no registered prefix
        self._evictable: OrderedDict[int, None] = OrderedDict()  # free but registered, least recent first
        self._key_of: dict[int, BlockKey] = {}  # registered block -> its key
        self._block_of: dict[BlockKey, int] = {}  # key -> the one block registered under it
        self.num_evicted = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._empty) + len(self._evictable)

    @property
    def num_cached_blocks(self) -> int:
        """Free blocks that still hold a registered prefix."""
        return len(self._evictable)

    def ref_count(self, block: int) -> int:
        return self._refs[block]

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def allocate(self, n: int) -> list[int]:
        """Take `n` free blocks, each with one reference and no key (evicting cached prefixes if needed)."""
        if n > self.num_free_blocks:
            raise OutOfBlocksError(f"asked for {n} blocks, {self.num_free_blocks} free")
        blocks = []
        for _ in range(n):
            if self._empty:
                block = self._empty.popleft()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._block_of[self._key_of.pop(block)]
                self.num_evicted += 1
            self._refs[block] = 1
            blocks.append(block)
        return blocks

    def free(self, blocks: Seq[int]) -> None:
        """Drop one reference to each of `blocks`. Pass a sequence's table tail first (reversed) so that,
        of its cached blocks, the deepest are evicted first and the shared head survives longest."""
        for b in blocks:
            if self._refs[b] < 1:
                raise ValueError(f"block {b} freed more often than allocated")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if b in self._key_of:
                    self._evictable[b] = None
                else:
                    self._empty.append(b)

    def grow(self, table: list[int], num_tokens: int) -> bool:
        """Extend `table` in place so it holds `num_tokens` tokens.

        Returns False, changing nothing, when too few blocks are free.
        """
        missing = self.blocks_for(num_tokens) - len(table)
        if missing <= 0:
            return True
        if missing > self.num_free_blocks:
            return False
        table.extend(self.allocate(missing))
        return True

    # -- prefix caching ------------------------------------------------------------

    def match(self, keys: Seq[BlockKey]) -> list[int]:
        """The blocks registered under the longest leading run of `keys` (nothing is taken)."""
        if not self.caching:
            return []
        found = []
        for key in keys:
            block = self._block_of.get(key)
            if block is None:
                break
            found.append(block)
        return found

    def take(self, blocks: Seq[int]) -> None:
        """Add a reference to each of `blocks` (registered ones, from `match`), taking the free ones
        out of the eviction order."""
        for b in blocks:
            if self._refs[b] == 0:
                del self._evictable[b]
            self._refs[b] += 1

    def register(self, block: int, key: BlockKey) -> None:
        """Record that used `block` is full and holds the prefix `key`. A key already held by another
        block (two equal prompts computed side by side) keeps its first block; this one stays unkeyed."""
        if not self.caching or key in self._block_of or block in self._key_of:
            return
        if self._refs[block] < 1:
            raise ValueError(f"block {block} registered while free")
        self._key_of[block] = key
        self._block_of[key] = block

    def forget_prefixes(self) -> None:
        """Drop every key (a failed step may have left blocks half written): cached free blocks become
        plain free ones; blocks in use keep their owners."""
        self._empty.extend(self._evictable)
        self._evictable.clear()
        self._key_of.clear()
        self._block_of.clear()

    def check(self) -> None:
        """Assert the bookkeeping is consistent (tests; O(num_blocks))."""
        free = set(self._empty) | set(self._evictable)
        assert len(free) == len(self._empty) + len(self._evictable), "a block is free twice"
        for b in range(self.num_blocks):
            assert (self._refs[b] == 0) == (b in free), f"block {b}: {self._refs[b]} refs, free={b in free}"
            assert (b in self._evictable) <= (b in self._key_of), f"evictable block {b} has no key"
            assert (b in self._key_of) <= (self._refs[b] > 0 or b in self._evictable), f"block {b} lost"
        assert all(self._block_of[k] == b for b, k in self._key_of.items()), "key maps disagree"
        assert len(self._block_of) == len(self._key_of), "key maps differ in size"
