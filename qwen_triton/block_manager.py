"""The KV pool's bookkeeping: which fixed-size blocks are free and which are used.
Plain Python; the tensors live in the model runner."""
from __future__ import annotations

from collections import deque


class OutOfBlocksError(RuntimeError):
    """Raised by `allocate` when asked for more blocks than are free."""


class BlockManager:
    """Allocates and frees block ids in [0, num_blocks).

    Each used block has one owner, the block table of one sequence (no prefix
    sharing yet); freeing a block that is not in use is an error.
    """

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._used = [False] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def allocate(self, n: int) -> list[int]:
        """Take `n` free blocks."""
        if n > len(self._free):
            raise OutOfBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self._used[b] = True
        return blocks

    def free(self, blocks: list[int]) -> None:
        """Return `blocks` to the free list."""
        for b in blocks:
            if not self._used[b]:
                raise ValueError(f"block {b} freed more often than allocated")
            self._used[b] = False
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
