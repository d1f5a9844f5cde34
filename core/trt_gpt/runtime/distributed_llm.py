"""The LLM over several ranks (tensor and pipeline parallel), launched by mpirun, srun or torchrun.

Rank 0 is an ordinary `LLM`: its scheduler, sampler and outputs are the single-rank ones. Only the model call
changes: `StageRunner` stands in for `engine.model`, so when rank 0's executor runs a step, the runner
broadcasts the step's plan (tokens, positions, attention metadata with block tables and slot mapping, logits
rows) to every rank on a gloo control group, and all ranks run their pipeline stage of it. The other ranks
sit in `follow()`, which receives plans until rank 0 shuts down. Each rank's KV cache mirrors rank 0's block
ids: the plan carries rank 0's block tables, and the block copies its scheduler made since the last step
(copy-on-write of beams), which every other rank applies before running the step.

Pipeline: a step is split into micro-batches of whole sequences (as many as pipeline stages by default);
stage s receives a micro-batch's hidden states from the same tp_rank of stage s-1, runs its layers and sends
them on without waiting, so stages work on different micro-batches at once; the last stage's tp_rank 0
sends each micro-batch's logits to rank 0. Any error inside a step ends every rank (`distributed.abort`).
"""
from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from ..checkpoint import load_engine_config
from ..distributed import (DistWorld, StageGroups, abort, current_info, describe, init_world, launch_world_size,
                           use_groups)
from ..errors import TrtGptError
from .engine import Engine
from .kv_cache import BlockAllocator, PagedKVCache
from .llm import LLM
from .step_plan import HEADER_LEN, OP_STOP, StepPlan, merge_logits

CUDA_GRAPHS_ENV = "TRT_GPT_CUDA_GRAPHS"


class StageRunner:
    """This rank's stage of the model, behind the model's own call signature."""

    def __init__(self, engine: Engine, cache: PagedKVCache, world: DistWorld, groups: StageGroups,
                 micro_batches: int | None):
        self.model, self.cache, self.world, self.groups = engine.model, cache, world, groups
        self.hidden_size, self.vocab_size = engine.cfg.hidden_size, engine.cfg.vocab_size
        self.dtype = engine.dtype   # of the hidden states passed between stages
        self.micro_batches = micro_batches or groups.mapping.pp_size
        self.steps = 0
        self.pending_copies: tuple[list[int], list[int]] = ([], [])   # rank 0: made since the last step
        self.side_inputs = list(getattr(engine, "side_inputs", ()))     # LoRA slots (runtime/lora_pool.py)

    def __getattr__(self, name: str) -> Any:
        # everything but the call is the wrapped model's (config, layers, parameters)
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    # ------------------------------------------------------------------ rank 0
    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: Any, kv_caches: list,
                 hidden: torch.Tensor | None = None, logits_rows: torch.Tensor | None = None,
                 window: int | None = None) -> torch.Tensor:
        if not self.world.is_leader:
            raise TrtGptError("only rank 0 schedules steps; the other ranks call DistributedLLM.follow()")
        if hidden is not None:
            raise TrtGptError("a multi-rank engine takes token ids, not hidden states, from the executor")
        mbs = self.micro_batches if self.groups.mapping.pp_size > 1 else 1
        plan = StepPlan(input_ids, positions, meta, logits_rows, window, mbs, copies=self.pending_copies,
                        side=[v for s in self.side_inputs for v in s.wire()])
        self.pending_copies = ([], [])
        self.steps += 1
        with self.world.watchdog.guard(f"step {self.steps}"):
            try:
                header, payload = plan.encode()
                dist.broadcast(header, 0, group=self.world.ctrl)
                dist.broadcast(payload, 0, group=self.world.ctrl)
                return self.run(plan, kv_caches)
            except Exception as e:
                abort(f"step {self.steps} failed ({describe(e)})")

    def record_copies(self, src: list[int], dst: list[int]) -> None:
        """Block copies rank 0's cache just made, for the other ranks to repeat before the next step."""
        self.pending_copies[0].extend(src)
        self.pending_copies[1].extend(dst)

    # ------------------------------------------------------------------ ranks > 0
    @torch.inference_mode()
    def follow(self, kv_caches: list) -> int:
        """Run rank 0's steps until it shuts down; returns the exit code rank 0 ends with."""
        header = torch.empty(HEADER_LEN, dtype=torch.int64)
        while True:
            try:
                dist.broadcast(header, 0, group=self.world.ctrl)
            except Exception as e:
                abort(f"lost rank 0 while waiting for its next step ({describe(e)})")
            if int(header[0]) == OP_STOP:
                return int(header[1])
            self.steps += 1
            with self.world.watchdog.guard(f"step {self.steps}"):
                try:
                    payload = torch.empty(StepPlan.payload_len(header), dtype=torch.int64)
                    dist.broadcast(payload, 0, group=self.world.ctrl)
                    plan = StepPlan.decode(header, payload, self.world.device)
                    self.cache.copy_blocks(*plan.copies)
                    rest = plan.side
                    for s in self.side_inputs:
                        rest = s.apply_wire(rest)
                    self.run(plan, kv_caches)
                except Exception as e:
                    abort(f"step {self.steps} failed ({describe(e)})")

    # ------------------------------------------------------------------ every rank
    def run(self, plan: StepPlan, kv_caches: list) -> torch.Tensor | None:
        """This stage's part of one step; returns the logits on rank 0, None elsewhere."""
        g, rank, dev = self.groups, self.world.info.rank, self.world.device
        parts = plan.split()
        sends: list[tuple[Any, torch.Tensor]] = []   # keep each buffer alive until its send completes
        logits: list[torch.Tensor] = []
        for p in parts:
            hidden = None
            if g.prev_rank is not None:
                hidden = torch.empty((p.num_tokens, self.hidden_size), dtype=self.dtype, device=dev)
                dist.recv(hidden, g.prev_rank)
            out = self.model(p.input_ids, p.positions, p.meta, kv_caches, hidden=hidden, logits_rows=p.logits_rows,
                             window=p.window).contiguous()
            if g.next_rank is not None:
                sends.append((dist.isend(out, g.next_rank), out))
            elif rank == 0:
                logits.append(out)
            elif rank == g.last_stage_root:
                sends.append((dist.isend(out, 0), out))
        if rank == 0 and g.next_rank is not None:   # rank 0 is stage 0 of several: the last stage has the logits
            for p in parts:
                buf = torch.empty((p.num_rows, self.vocab_size), dtype=torch.float32, device=dev)
                dist.recv(buf, g.last_stage_root)
                logits.append(buf)
        for work, _ in sends:
            work.wait()
        return merge_logits(plan, parts, logits) if rank == 0 else None


class DistributedLLM(LLM):
    """`LLM` on one rank of a tp_size x pp_size engine; every rank constructs it with the same arguments.

    Rank 0 (`is_leader`) is used like `LLM` and calls `shutdown()` at the end (also done at exit); the other
    ranks call `follow()`, which returns when rank 0 shuts down. `micro_batches` sets how many pipeline
    micro-batches a step is cut into (default: pp_size).
    """

    def __init__(self, engine_dir: str | Path, device: str | None = None, *, micro_batches: int | None = None,
                 **kwargs: Any):
        info = current_info()
        cfg, _ = load_engine_config(engine_dir)
        mp = cfg.mapping
        if info.world_size != mp.world_size:
            # every rank reaches the same verdict without talking to the others: all end at once
            raise TrtGptError(f"{engine_dir}: engine built for {mp.world_size} rank(s) (tp_size {mp.tp_size} x "
                              f"pp_size {mp.pp_size}) but {info.world_size} were launched; launch with -np "
                              f"{mp.world_size}")
        if micro_batches is not None and micro_batches < 1:
            raise TrtGptError(f"micro_batches is {micro_batches}, expected a positive integer")
        self.world = init_world(device, info)
        self.groups = self.world.stage_groups(mp.tp_size, mp.pp_size)
        self._closed = False
        try:
            with use_groups(self.groups), _no_cuda_graphs():
                super().__init__(engine_dir, device=str(self.world.device), **kwargs)
            self._agree_cache_size()
        except Exception as e:
            # the other ranks are already waiting on this one: end them all, never hang
            abort(f"cannot load {engine_dir} ({e if isinstance(e, TrtGptError) else describe(e)})")
        self.runner = StageRunner(self.engine, self.cache, self.world, self.groups, micro_batches)
        self.engine.model = self.runner
        if self.is_leader:
            self._mirror_block_copies()
        if self.is_leader:
            atexit.register(self.shutdown)
            _LEADERS.append(self)

    @property
    def is_leader(self) -> bool:
        return self.world.is_leader

    @property
    def rank(self) -> int:
        return self.world.info.rank

    def _agree_cache_size(self) -> None:
        """Rank 0 allocates block ids for all ranks, so it may use only as many as the smallest pool holds
        (GPU pools are sized from each GPU's free memory)."""
        n = self.world.all_min(self.cache.num_blocks)
        if n < self.cache.num_blocks:
            self.cache.num_blocks = n
            self.cache.allocator = BlockAllocator(n)

    def _mirror_block_copies(self) -> None:
        copy = self.cache.copy_blocks

        def copy_and_record(src: list[int], dst: list[int]) -> None:
            copy(src, dst)
            self.runner.record_copies(list(src), list(dst))
        self.cache.copy_blocks = copy_and_record

    def follow(self) -> int:
        """Ranks > 0: run rank 0's steps until it shuts down; returns the exit code rank 0 ends with."""
        if self.is_leader:
            raise TrtGptError("follow() is for ranks > 0; rank 0 generates and then calls shutdown()")
        return self.runner.follow(self.cache.layers)

    def shutdown(self, exit_code: int = 0) -> None:
        """Rank 0: release the other ranks from `follow()`, telling them the exit code to end with
        (idempotent: the first call's code counts)."""
        if self.is_leader and not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):   # a rank that is already gone needs no release
                dist.broadcast(torch.tensor([OP_STOP, exit_code] + [0] * (HEADER_LEN - 2), dtype=torch.int64), 0,
                               group=self.world.ctrl)

    def __enter__(self) -> "DistributedLLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


@contextlib.contextmanager
def _no_cuda_graphs() -> Iterator[None]:
    """Keep the executor from capturing decode CUDA graphs: a replay would bypass the plan broadcast (the
    other ranks would wait for a step that never comes), and a later pipeline stage cannot even be captured
    (its input is the previous stage's hidden states). TRT_GPT_CUDA_GRAPHS=0 is the executor's own switch."""
    old = os.environ.get(CUDA_GRAPHS_ENV)
    os.environ[CUDA_GRAPHS_ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CUDA_GRAPHS_ENV, None)
        else:
            os.environ[CUDA_GRAPHS_ENV] = old


def llm_factory(default: Callable[..., LLM] = LLM) -> Callable[..., LLM]:
    """The LLM constructor for this process: `default` on a single rank; under a multi-rank launch a
    DistributedLLM whose ranks > 0 serve rank 0 inside the call and then exit, so that only rank 0 runs
    (and prints from) the caller's code."""
    if launch_world_size() <= 1:
        return default

    def make(engine_dir: str | Path, device: str | None = None, **kwargs: Any) -> LLM:
        llm = DistributedLLM(engine_dir, device, **kwargs)
        if not llm.is_leader:
            raise SystemExit(llm.follow())   # rank 0's exit code: an error there fails every rank
        return llm
    return make


_LEADERS: list[DistributedLLM] = []


def release_followers(exit_code: int) -> None:
    """Rank 0 ending with `exit_code`: release the other ranks so that they end with the same code."""
    for llm in _LEADERS:
        llm.shutdown(exit_code)
