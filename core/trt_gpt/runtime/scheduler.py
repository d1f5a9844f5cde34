"""In-flight batching scheduler: which tokens of which requests run in the next executor step.

Each step first gives every running request its next token (decode, or the next chunk of a prompt),
then admits waiting requests while the token budget (`max_num_tokens`), the batch size and free cache
blocks allow. Long prompts are split into chunks. When blocks run out, the most recently arrived
running request is preempted: its blocks are freed and it waits to be recomputed later, so the
engine never runs out of memory and every request completes.
"""
from __future__ import annotations

from collections import deque

from ..errors import TrtGptError
from .kv_cache import PagedKVCache
from .sequence import Sequence, Status


class Scheduler:
    def __init__(self, cache: PagedKVCache, max_batch_size: int, max_num_tokens: int, max_seq_len: int):
        self.cache = cache
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.max_seq_len = max_seq_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._arrivals = 0

    def add(self, seq: Sequence) -> None:
        need = self.cache.blocks_for(min(len(seq.prompt_ids) + seq.params.max_tokens, self.max_seq_len))
        if need > self.cache.num_blocks:
            raise TrtGptError(f"request of {len(seq.prompt_ids)} prompt + {seq.params.max_tokens} new tokens needs "
                              f"{need} KV blocks but the cache has {self.cache.num_blocks}; raise "
                              "--kv_cache_free_gpu_memory_fraction or lower max_tokens")
        seq.arrival = self._arrivals
        self._arrivals += 1
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _grow(self, seq: Sequence, n_tokens: int) -> bool:
        """Give `seq` blocks for `n_tokens` more tokens; all or nothing."""
        need = self.cache.blocks_for(seq.num_computed + n_tokens) - len(seq.blocks)
        if need <= 0:
            return True
        got = self.cache.allocator.allocate(need)
        if got is None:
            return False
        seq.blocks.extend(got)
        return True

    def release(self, seq: Sequence) -> None:
        """Free a request's blocks (finished, cancelled or preempted)."""
        self.cache.allocator.free(seq.blocks)
        seq.blocks = []
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)

    def _preempt(self, victim: Sequence) -> None:
        self.release(victim)
        victim.num_computed = 0          # its K/V is gone: prompt and outputs are recomputed on resume
        victim.prompt_logits = []
        victim.status = Status.WAITING
        self.waiting.appendleft(victim)
        self.num_preemptions += 1

    def schedule(self) -> list[tuple[Sequence, int]]:
        budget = self.max_num_tokens
        batch: list[tuple[Sequence, int]] = []
        self.running.sort(key=lambda s: s.arrival)
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_pending, budget)
            while not self._grow(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                batch.append((seq, n))
                budget -= n
                i += 1
                continue
            # seq itself was preempted; the list shrank under us, so the same index is the next one
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            n = min(seq.num_pending, budget)
            if not self._grow(seq, n):
                break                      # wait for blocks to come back
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.append((seq, n))
            budget -= n
        return batch
