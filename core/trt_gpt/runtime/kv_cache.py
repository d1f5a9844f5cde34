"""Paged KV cache: per layer a pool of fixed-size blocks, and the allocator that hands blocks to requests.

Blocks are reference counted so that beams of one request can share the blocks of their common
prefix (copy-on-fork): a fork only bumps counts, and a shared block is copied the moment one of its
owners needs to write into it (`PagedKVCache.copy_blocks`).
"""
from __future__ import annotations

import torch

from ..errors import TrtGptError
from ..kernels.kv_cache_spec import KVCacheSpec


class BlockAllocator:
    """Free list of block ids with reference counts; allocation is all-or-nothing so a request never
    holds a partial grant."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def refcount(self, block: int) -> int:
        return self._refs[block]

    def allocate(self, n: int) -> list[int] | None:
        if n > len(self._free):
            return None
        got = [self._free.pop() for _ in range(n)]
        for b in got:
            self._refs[b] = 1
        return got

    def fork(self, blocks: list[int]) -> list[int]:
        """Another owner for `blocks` (no copy); returns a new list of the same ids."""
        for b in blocks:
            self._refs[b] += 1
        return list(blocks)

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block; a block returns to the pool when nobody holds it."""
        for b in reversed(blocks):
            if self._refs[b] <= 0:
                raise RuntimeError(f"kv cache: block {b} freed more often than allocated")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)


class PagedKVCache:
    """K and V pools for this rank's layers: each [num_blocks, kv_heads, block_size, head_size] of the
    spec's storage dtype (`spec`: the `KVCacheSpec` every writer and reader of these pools follows)."""

    def __init__(self, num_layers: int, num_blocks: int, kv_heads: int, block_size: int, head_size: int,
                 spec: KVCacheSpec, device: torch.device):
        if num_blocks < 1:
            raise TrtGptError("kv cache: not enough memory for a single block "
                              "(lower max_batch_size/max_seq_len or raise --kv_cache_free_gpu_memory_fraction)")
        self.spec = spec
        dtype = spec.dtype
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (num_blocks, kv_heads, block_size, head_size)
        self.layers = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                       for _ in range(num_layers)]
        self.allocator = BlockAllocator(num_blocks)

    @staticmethod
    def bytes_per_block(num_layers: int, kv_heads: int, block_size: int, head_size: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * kv_heads * block_size * head_size * torch.empty((), dtype=dtype).element_size()

    def blocks_for(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    @torch.inference_mode()
    def copy_blocks(self, src: list[int], dst: list[int]) -> None:
        """Copy the K/V of blocks `src[i]` into `dst[i]` in every layer (copy-on-write of shared blocks)."""
        if not src:
            return
        dev = self.layers[0][0].device
        s = torch.tensor(src, dtype=torch.int64, device=dev)
        d = torch.tensor(dst, dtype=torch.int64, device=dev)
        for k, v in self.layers:
            k.index_copy_(0, d, k.index_select(0, s))
            v.index_copy_(0, d, v.index_select(0, s))


def available_host_memory() -> int:
    """Bytes of host memory available to new allocations (psutil, else /proc/meminfo's MemAvailable)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise TrtGptError("cannot tell the available host memory (install psutil); size the KV cache with "
                      "--max_tokens_in_paged_kv_cache")


def plan_num_blocks(bytes_per_block: int, block_size: int, device: torch.device, max_tokens: int | None,
                    free_fraction: float, cap_tokens: int, min_tokens: int = 1) -> int:
    """Blocks to allocate: from an explicit token count, else a fraction of the free memory of the device
    (free GPU memory; available host memory on CPU), at most `cap_tokens` (max_batch_size * max_seq_len).

    A pool sized from memory that cannot hold `min_tokens` (one sequence of max_seq_len) is an error.
    """
    if not 0.0 < free_fraction <= 1.0:
        raise TrtGptError(f"kv_cache_free_gpu_memory_fraction is {free_fraction}, expected a value in (0, 1]")
    if max_tokens is not None:
        if max_tokens < 1:
            raise TrtGptError(f"max_tokens_in_paged_kv_cache is {max_tokens}, expected a positive integer")
        return max(1, (max_tokens + block_size - 1) // block_size)
    cap_blocks = (cap_tokens + block_size - 1) // block_size
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_host_memory()
    blocks = min(cap_blocks, int(free * free_fraction) // bytes_per_block)
    need = (min_tokens + block_size - 1) // block_size
    if blocks < need:
        where = "free GPU memory" if device.type == "cuda" else "available host memory"
        raise TrtGptError(f"kv cache: {free_fraction:g} of the {where} ({free / 2**30:.2f} GiB) holds "
                          f"{blocks * block_size} tokens, less than one sequence of max_seq_len {min_tokens} "
                          f"({need * bytes_per_block / 2**30:.2f} GiB); rebuild with a smaller --max_seq_len or "
                          "free memory")
    return blocks
