"""In-flight batching scheduler: which tokens of which requests run in the next executor step.

Each step first gives every running request its next tokens (one decode token per stream, or the
next chunk of a prompt), oldest request first, then admits waiting requests while the token budget
(`max_num_tokens`), the batch size and free cache blocks allow. Long prompts are split into chunks.
When blocks run out, the most recently arrived running request is preempted: its blocks are freed
and it waits to be recomputed later (prompt and the tokens generated so far), so the engine never
runs out of memory, the oldest request always progresses, and every request completes.

Beam-search requests run their beams as one unit (all beams in the same step). Beams share their
common prefix's blocks (reference counted); a shared block is copied just before a beam writes into
it, so beams never see each other's keys and values.
"""
from __future__ import annotations

import bisect

from ..errors import TrtGptError
from .kv_cache import PagedKVCache
from .sequence import Sequence, Status

Plan = list[tuple[Sequence, int]]


class Scheduler:
    def __init__(self, cache: PagedKVCache, max_batch_size: int, max_num_tokens: int, max_seq_len: int):
        self.cache = cache
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.max_seq_len = max_seq_len
        self.waiting: list[Sequence] = []     # kept in arrival order (preempted requests go back in place)
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._arrivals = 0

    # ------------------------------------------------------------------ requests in and out
    def blocks_needed(self, seq: Sequence) -> int:
        """The most blocks `seq` can ever hold at once: every beam with its own copy of the whole sequence
        (what a resumed beam request needs after a preemption)."""
        total = min(len(seq.prompt_ids) + seq.params.max_tokens, self.max_seq_len)
        return self.cache.blocks_for(total) * max(seq.params.num_beams, 1)

    def add(self, seq: Sequence) -> None:
        need = self.blocks_needed(seq)
        if need > self.cache.num_blocks:
            raise TrtGptError(f"request of {len(seq.prompt_ids)} prompt + {seq.params.max_tokens} new tokens "
                              f"(x{seq.params.num_beams} beams) needs {need} KV blocks but the cache has "
                              f"{self.cache.num_blocks}; raise --kv_cache_free_gpu_memory_fraction or lower "
                              "max_tokens")
        if seq.params.num_beams > self.max_num_tokens:
            raise TrtGptError(f"num_beams {seq.params.num_beams} exceeds max_num_tokens {self.max_num_tokens}")
        seq.arrival = self._arrivals
        self._arrivals += 1
        seq.status = Status.WAITING
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _free_streams(self, seq: Sequence) -> None:
        for s in {id(x): x for x in [seq, *seq.beams]}.values():
            self.cache.allocator.free(s.blocks)
            s.blocks = []

    def release(self, seq: Sequence) -> None:
        """Free a request's blocks (finished, cancelled or preempted) and drop it from the queues."""
        self._free_streams(seq)
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)

    def _preempt(self, victim: Sequence) -> None:
        self.release(victim)
        for s in victim.streams:
            s.num_computed = 0          # its K/V is gone: prompt and outputs are recomputed on resume
        victim.prompt_logits = []
        victim.status = Status.WAITING
        victim.num_preemptions += 1
        bisect.insort(self.waiting, victim, key=lambda s: s.arrival)
        self.num_preemptions += 1

    # ------------------------------------------------------------------ blocks
    def _cost(self, seq: Sequence, n: int) -> tuple[int, bool]:
        """(new blocks, whether the block written first is shared and must be copied) for n more tokens."""
        new = max(self.cache.blocks_for(seq.num_computed + n) - len(seq.blocks), 0)
        first = seq.num_computed // self.cache.block_size
        cow = first < len(seq.blocks) and self.cache.allocator.refcount(seq.blocks[first]) > 1
        return new, cow

    def _reserve(self, plan: Plan) -> bool:
        """Give every stream of `plan` blocks for its tokens (copying shared blocks it writes into);
        all or nothing."""
        if len(plan) == 1 and self._cost(*plan[0]) == (0, False):
            return True                    # the common decode step: the token fits the last block
        costs = [self._cost(s, n) for s, n in plan]
        if sum(new + cow for new, cow in costs) > self.cache.allocator.num_free:
            return False
        alloc = self.cache.allocator
        src, dst = [], []
        for (seq, _), (new, cow) in zip(plan, costs):
            first = seq.num_computed // self.cache.block_size
            # Re-checked: once the other owners of a shared block have copied it, the last one owns it.
            if cow and alloc.refcount(seq.blocks[first]) > 1:
                (fresh,) = alloc.allocate(1)
                src.append(seq.blocks[first])
                dst.append(fresh)
                alloc.free([seq.blocks[first]])
                seq.blocks[first] = fresh
            if new:
                seq.blocks.extend(alloc.allocate(new))
        if src:                            # most reservations copy nothing: skip the call's overhead
            self.cache.copy_blocks(src, dst)
        return True

    def reserve_prompt(self, seq: Sequence) -> bool:
        """Blocks for a whole prompt outside the queues (`LLM.score`)."""
        return self._reserve([(seq, seq.num_pending)])

    def fork_beams(self, req: Sequence, old: list[Sequence], sources: list[int], tokens: list[int]) -> None:
        """After a beam step: beam j of `req` continues stream `old[sources[j]]` with `tokens[j]`.

        `old` are the streams that ran the step (the request itself on its first step, then its
        beams). The new beams share the old streams' blocks (one more reference each); then the old
        streams let theirs go. Beams are updated in place so their sampling states keep their list
        aliases.
        """
        alloc = self.cache.allocator
        blocks = [alloc.fork(old[s].blocks) for s in sources]
        outs = [old[s].output_ids + [t] for s, t in zip(sources, tokens)]
        computed = old[0].num_computed
        for s in {id(x): x for x in old}.values():
            alloc.free(s.blocks)
            s.blocks = []
        for beam, b, o in zip(req.beams, blocks, outs):
            beam.blocks, beam.num_computed = b, computed
            beam.output_ids[:] = o

    # ------------------------------------------------------------------ the step plan
    @staticmethod
    def _plan(seq: Sequence, budget: int) -> Plan:
        """Tokens `seq` would run next within `budget` (empty: nothing fits)."""
        if not seq.beams:
            n = min(seq.num_pending, budget)
            return [(seq, n)] if n > 0 else []
        # A resumed beam request first recomputes each beam up to its last token (no logits needed),
        # then all beams run their last token in one step.
        behind = [b for b in seq.beams if b.num_pending > 1]
        if behind:
            plan = []
            for b in behind:
                n = min(b.num_pending - 1, budget)
                if n <= 0:
                    break
                plan.append((b, n))
                budget -= n
            return plan
        return [(b, 1) for b in seq.beams] if budget >= len(seq.beams) else []

    def schedule(self) -> Plan:
        budget = self.max_num_tokens
        batch: Plan = []
        running = self.running          # kept in arrival order (see the admission below): no sort
        bs = self.cache.block_size
        refcount = self.cache.allocator.refcount
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            if seq.inflight and len(seq.output_ids) + seq.inflight >= seq.params.max_tokens:
                i += 1                     # its last token is on the GPU already: nothing more to run
                continue
            if not seq.beams:
                # The common decode step, inlined (it is most of a large batch): one pending token that
                # fits the last block, which nobody else shares. Same outcome as _plan + _reserve.
                nc = seq.num_computed
                if len(seq.prompt_ids) + len(seq.output_ids) + seq.inflight - nc == 1:
                    blocks = seq.blocks
                    first = nc // bs
                    if first < len(blocks) and refcount(blocks[first]) <= 1:
                        batch.append((seq, 1))
                        budget -= 1
                        i += 1
                        continue
            plan = self._plan(seq, budget)
            if not plan:
                i += 1
                continue
            while not self._reserve(plan):
                victim = running[-1]         # the youngest; never one already in `batch` (those are older)
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                batch += plan
                budget -= sum(n for _, n in plan)
                i += 1
            # when seq itself was preempted the list shrank, so the same index is already the next one
        while self.waiting and budget > 0 and len(running) < self.max_batch_size:
            seq = self.waiting[0]
            if seq.inflight:
                break                      # preempted this step with a token still on the GPU: next step
            plan = self._plan(seq, budget)
            if not plan or not self._reserve(plan):
                break                      # wait for budget or blocks to come back
            self.waiting.pop(0)
            seq.status = Status.RUNNING
            # In arrival order (a resumed request is older than some running ones), so the next step
            # need not sort; arrivals are unique, so this equals a stable sort by arrival.
            bisect.insort(running, seq, key=lambda s: s.arrival)
            batch += plan
            budget -= sum(n for _, n in plan)
        return batch
