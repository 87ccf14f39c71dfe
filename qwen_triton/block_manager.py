"""The KV pool's bookkeeping: which fixed-size blocks are free, and how many
owners each used block has. Plain Python; the tensors live in the model runner."""
from __future__ import annotations

from collections import deque


class OutOfBlocksError(RuntimeError):
    """Raised by `allocate` when asked for more blocks than are free."""


class BlockManager:
    """Allocates, shares and frees block ids in [0, num_blocks).

    Every used block has a reference count >= 1; a block returns to the free
    list when its count drops to 0. Sharing (count > 1) is what prefix reuse
    and forks build on.
    """

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def ref_count(self, block_id: int) -> int:
        return self._refs[block_id]

    def allocate(self, n: int) -> list[int]:
        """Take `n` free blocks, each with reference count 1."""
        if n > len(self._free):
            raise OutOfBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self._refs[b] = 1
        return blocks

    def share(self, blocks: list[int]) -> None:
        """Add an owner to each of `blocks` (all must be in use)."""
        for b in blocks:
            if self._refs[b] < 1:
                raise ValueError(f"block {b} is not in use")
            self._refs[b] += 1

    def free(self, blocks: list[int]) -> None:
        """Drop one owner from each of `blocks`; unowned blocks become free."""
        for b in blocks:
            if self._refs[b] < 1:
                raise ValueError(f"block {b} freed more often than allocated")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)

    def grow(self, table: list[int], num_tokens: int) -> bool:
        """Extend `table` in place so it holds `num_tokens` tokens.

        Returns False, changing nothing, when too few blocks are free.
        """
        missing = self.blocks_for(num_tokens) - len(table)
        if missing <= 0:
            return True
        if missing > len(self._free):
            return False
        table.extend(self.allocate(missing))
        return True
