"""The public `LLM` API: generate (batch or streaming) and score, over the in-flight batching runtime."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence as Seq

import torch

from ..errors import TrtGptError
from .engine import Engine
from .executor import Executor
from .kv_cache import PagedKVCache, plan_num_blocks
from .sampler import RequestSamplingState, check_stop, process_and_sample
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence, Status
from .tokenizer import Tokenizer, load_tokenizer


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]             # generated tokens only
    text: str = ""
    finish_reason: str | None = None
    finished: bool = False
    new_token_ids: list[int] = field(default_factory=list)  # streaming: tokens since the last update


class LLM:
    """A loaded engine with its KV cache, scheduler and tokenizer.

    `generate` accepts strings (tokenized with the engine's tokenizer) or lists of token ids.
    """

    def __init__(self, engine_dir: str | Path, device: str | None = None, tokenizer_dir: str | Path | None = None,
                 vocab_file: str | Path | None = None, kv_cache_free_gpu_memory_fraction: float = 0.9,
                 max_tokens_in_paged_kv_cache: int | None = None, max_batch_size: int | None = None,
                 max_num_tokens: int | None = None):
        self.engine = Engine(engine_dir, device)
        cfg, build = self.engine.cfg, self.engine.build
        self.cfg, self.build = cfg, build
        kvh = max(cfg.num_key_value_heads // cfg.mapping.tp_size, 1)
        nlayers = len(self.engine.model.transformer.layers)
        per_block = PagedKVCache.bytes_per_block(nlayers, kvh, build.tokens_per_block, cfg.head_size,
                                                 self.engine.kv_dtype)
        batch = max_batch_size or build.max_batch_size
        blocks = plan_num_blocks(per_block, build.tokens_per_block, self.engine.device,
                                 max_tokens_in_paged_kv_cache, kv_cache_free_gpu_memory_fraction,
                                 cap_tokens=batch * build.max_seq_len)
        self.cache = PagedKVCache(nlayers, blocks, kvh, build.tokens_per_block, cfg.head_size,
                                  self.engine.kv_dtype, self.engine.device)
        self.executor = Executor(self.engine, self.cache)
        self.scheduler = Scheduler(self.cache, batch, max_num_tokens or build.max_num_tokens, build.max_seq_len)
        self._tokenizer: Tokenizer | None = None
        self._tok_args = (tokenizer_dir, vocab_file)

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            tdir, vfile = self._tok_args
            self._tokenizer = load_tokenizer(tdir or self.engine.dir, vfile)
        return self._tokenizer

    # ------------------------------------------------------------------ requests
    def _encode(self, prompt: str | Seq[int], add_special_tokens: bool = True) -> list[int]:
        ids = self.tokenizer.encode(prompt, add_special_tokens) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise TrtGptError("empty prompt: at least one token is needed")
        bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise TrtGptError(f"token id {bad[0]} out of the vocabulary (0..{self.cfg.vocab_size - 1})")
        if len(ids) > self.build.max_input_len:
            raise TrtGptError(f"prompt of {len(ids)} tokens exceeds the engine's max_input_len "
                              f"({self.build.max_input_len})")
        return ids

    def add_request(self, prompt: str | Seq[int], params: SamplingParams | None = None,
                    add_special_tokens: bool = True) -> Sequence:
        params = params or SamplingParams()
        params.validate(self.cfg.vocab_size)
        ids = self._encode(prompt, add_special_tokens)
        room = self.build.max_seq_len - len(ids)
        if room < 1:
            raise TrtGptError(f"prompt of {len(ids)} tokens leaves no room under max_seq_len {self.build.max_seq_len}")
        if params.max_tokens > room:
            params = _replace(params, max_tokens=room)
        state = RequestSamplingState(params, ids)
        seq = Sequence(prompt_ids=ids, params=params, sampling=state)
        seq.output_ids = state.output_ids   # one list, appended to by check_stop
        self.scheduler.add(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop a request now and return its cache blocks."""
        self.scheduler.release(seq)
        seq.status, seq.finish_reason = Status.FINISHED, "cancelled"

    def step(self) -> list[Sequence]:
        """Run one executor step; returns the sequences that got a new token."""
        batch = self.scheduler.schedule()
        if not batch:
            if self.scheduler.has_work:
                raise TrtGptError("scheduler made no progress: the KV cache is too small for any waiting request")
            return []
        logits = self.executor.step(batch, window=None)
        ready = [i for i, (seq, _) in enumerate(batch) if seq.num_pending == 0]
        if not ready:
            return []
        seqs = [batch[i][0] for i in ready]
        rows = logits[torch.tensor(ready, device=logits.device)] if len(ready) != len(batch) else logits
        tokens = process_and_sample(rows, [s.sampling for s in seqs]).tolist()
        for seq, tok in zip(seqs, tokens):
            reason = check_stop(seq.sampling, tok)
            if reason is not None or seq.length >= self.build.max_seq_len:
                seq.status, seq.finish_reason = Status.FINISHED, reason or "length"
                self.scheduler.release(seq)
        return seqs

    # ------------------------------------------------------------------ public API
    def _output(self, seq: Sequence, since: int = 0) -> RequestOutput:
        toks = list(seq.output_ids)
        text = self.tokenizer.decode(toks) if self._tokenizer is not None else ""
        return RequestOutput(seq.request_id, list(seq.prompt_ids), toks, text, seq.finish_reason,
                             seq.status is Status.FINISHED, toks[since:])

    def generate(self, prompts: str | Seq[int] | Seq[str | Seq[int]], params: SamplingParams | Seq[SamplingParams]
                 | None = None, add_special_tokens: bool = True) -> list[RequestOutput]:
        """Run prompts to completion; outputs in prompt order."""
        outs: dict[int, RequestOutput] = {}
        for out in self.generate_stream(prompts, params, add_special_tokens):
            if out.finished:
                outs[out.request_id] = out
        order = self.last_request_ids
        return [outs[i] for i in order]

    def generate_stream(self, prompts, params=None, add_special_tokens: bool = True) -> Iterator[RequestOutput]:
        """Yield a RequestOutput for every request each time it gets new tokens (and once when it ends)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise TrtGptError(f"{len(params)} sampling params for {len(prompts)} prompts")
        if any(isinstance(p, str) for p in prompts):
            _ = self.tokenizer
        seqs = [self.add_request(p, sp, add_special_tokens) for p, sp in zip(prompts, params)]
        self.last_request_ids = [s.request_id for s in seqs]
        mine = {s.request_id for s in seqs}
        sent = {s.request_id: 0 for s in seqs}
        while any(s.status is not Status.FINISHED for s in seqs):
            for seq in self.step():
                if seq.request_id in mine:
                    yield self._output(seq, sent[seq.request_id])
                    sent[seq.request_id] = len(seq.output_ids)

    @torch.inference_mode()
    def score(self, token_lists: Seq[Seq[int]]) -> list[torch.Tensor]:
        """float32 logits [len, vocab] at every position of each token list (one packed prefill)."""
        seqs = [Sequence(prompt_ids=self._encode(t), params=SamplingParams(max_tokens=1)) for t in token_lists]
        outs: list[torch.Tensor] = []
        try:
            for seq in seqs:
                if not self.scheduler._grow(seq, len(seq.prompt_ids)):
                    raise TrtGptError("score: the KV cache cannot hold this input")
            logits = self.executor.step([(s, len(s.prompt_ids)) for s in seqs], all_logits=True)
            start = 0
            for s in seqs:
                outs.append(logits[start:start + len(s.prompt_ids)].cpu())
                start += len(s.prompt_ids)
        finally:
            for s in seqs:
                self.cache.allocator.free(s.blocks)
                s.blocks = []
        return outs


def _replace(params: SamplingParams, **kw) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(params, **kw)
