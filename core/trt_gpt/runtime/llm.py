"""The public `LLM` API: generate (batch or streaming) and score, over the in-flight batching runtime.

Requests join with `add_request` and leave when finished or `cancel`led; each `step` runs one
scheduled batch through the executor, then samples (or advances beam search) for every request
whose pending tokens are all computed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence as Seq

import torch

from ..errors import TrtGptError
from .engine import Engine
from .executor import Executor
from .kv_cache import PagedKVCache, plan_num_blocks
from .lora_pool import LoraRequests
from .overlap import OverlappedScheduler, PendingStep, overlap_ok
from .prompt_pool import PromptTablePool, load_prompt_table
from .sampler import BeamSearchState, RequestSamplingState, check_stops, process_and_sample, process_logits
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence, Status
from .tokenizer import Tokenizer, load_tokenizer

Prompt = str | Seq[int]


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]             # generated tokens only (beam search: the best beam)
    text: str = ""
    finish_reason: str | None = None
    finished: bool = False
    new_token_ids: list[int] = field(default_factory=list)  # streaming: tokens since the last update
    beams: list[list[int]] | None = None       # beam search: every beam's tokens, best first when finished
    beam_scores: list[float] | None = None     # beam search: HF-style scores (sum logprob / len**length_penalty)
    beam_texts: list[str] | None = None
    generation_logits: torch.Tensor | None = None  # [n, vocab] raw logits of each step (return_logits)


class LLM:
    """A loaded engine with its KV cache, scheduler and tokenizer.

    `generate` accepts strings (tokenized with the engine's tokenizer) or lists of token ids;
    `generate_stream` yields outputs as tokens arrive. For in-flight serving, drive it by hand:

        seq = llm.add_request([464, 3290], SamplingParams(max_tokens=8))   # joins at the next step
        while llm.scheduler.has_work:
            for s in llm.step(): ...            # requests that got a token; s.output_ids, s.status
        llm.cancel(seq)                         # leaves at once, its cache blocks freed

    Beam-search requests report their beams in `RequestOutput.beams` (best first when finished);
    their `token_ids` follow the current best beam, so `new_token_ids` is only meaningful without beams.
    """

    def __init__(self, engine_dir: str | Path, device: str | None = None, tokenizer_dir: str | Path | None = None,
                 vocab_file: str | Path | None = None, kv_cache_free_gpu_memory_fraction: float = 0.9,
                 max_tokens_in_paged_kv_cache: int | None = None, max_batch_size: int | None = None,
                 max_num_tokens: int | None = None, context_fmha_fp32_acc: bool = True,
                 prompt_tables: dict[str, str | Path] | None = None, max_loras: int | None = None):
        # context_fmha_fp32_acc=False: fp16 accumulation of P.V in the Triton prefill (the reference's default)
        self.engine = Engine(engine_dir, device, context_fmha_fp32_acc=context_fmha_fp32_acc)
        cfg, build = self.engine.cfg, self.engine.build
        self.cfg, self.build = cfg, build
        kvh = max(cfg.num_key_value_heads // cfg.mapping.tp_size, 1)
        nlayers = len(self.engine.model.transformer.layers)
        per_block = PagedKVCache.bytes_per_block(nlayers, kvh, build.tokens_per_block, cfg.head_size,
                                                 self.engine.kv_dtype)
        batch = max_batch_size or build.max_batch_size
        blocks = plan_num_blocks(per_block, build.tokens_per_block, self.engine.device,
                                 max_tokens_in_paged_kv_cache, kv_cache_free_gpu_memory_fraction,
                                 cap_tokens=batch * build.max_seq_len * build.max_beam_width,
                                 min_tokens=build.max_seq_len)
        self.cache = PagedKVCache(nlayers, blocks, kvh, build.tokens_per_block, cfg.head_size,
                                  self.engine.kv_spec, self.engine.device)
        self._setup_prompt_tables(prompt_tables)   # before the executor captures graphs reading the pool
        # LoRA: the slot pool is attached to the layers before the executor captures its graphs
        self.lora = LoraRequests.for_engine(self.engine, max_loras, max_num_tokens or build.max_num_tokens)
        # per-token inputs besides the tokens (LoRA slots) the executor stages each step
        self.engine.side_inputs = [self.lora] if self.lora is not None else []
        self.executor = Executor(self.engine, self.cache)
        self.overlap = OverlappedScheduler(self.executor) if OverlappedScheduler.enabled(self.executor) else None
        self.scheduler = Scheduler(self.cache, batch, max_num_tokens or build.max_num_tokens, build.max_seq_len)
        self._tokenizer: Tokenizer | None = None
        self._tok_args = (tokenizer_dir, vocab_file)
        self.last_request_ids: list[int] = []

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            tdir, vfile = self._tok_args
            self._tokenizer = load_tokenizer(tdir or self.engine.dir, vfile)
        return self._tokenizer

    # ------------------------------------------------------------------ prompt tables
    def _setup_prompt_tables(self, tables: dict[str, str | Path] | None) -> None:
        """The engine's prompt-table pool (max_prompt_embedding_table_size rows on the device), handed to the
        model's embedding, and the tables given at construction (every rank of a multi-rank engine loads
        them in the same order, so their pool rows agree)."""
        rows = self.build.max_prompt_embedding_table_size
        self.prompt_pool: PromptTablePool | None = None
        self._prompt_users: dict[int, str] = {}   # id(request) -> the table it holds
        if rows:
            model = self.engine.model
            self.prompt_pool = PromptTablePool(rows, self.cfg.hidden_size, getattr(torch, self.cfg.dtype),
                                               self.engine.device, self.cfg.vocab_size)
            model.prompt_table = (self.prompt_pool.buffer, self.cfg.vocab_size)
        for name, path in (tables or {}).items():
            self._load_table(name, path)

    def add_prompt_table(self, name: str, path: str | Path, source: str | None = None) -> None:
        """Load a prompt-tuning table (.npy, PEFT prompt-tuning dir, NeMo .nemo) for requests naming it
        (`SamplingParams(prompt_table=name, prompt_task=k)`); no rebuild, no graph recapture."""
        self._single_rank("add_prompt_table")
        self._load_table(name, path, source)

    def _load_table(self, name: str, path: str | Path, source: str | None = None) -> None:
        if self.prompt_pool is None:
            raise TrtGptError(f"prompt table '{name}': the engine was built without prompt tables (build with "
                              f"--max_prompt_embedding_table_size)")
        self.prompt_pool.add(str(name), load_prompt_table(path, self.cfg, self.prompt_pool.rows, source))

    def _single_rank(self, what: str) -> None:
        # the other ranks of a multi-rank engine follow rank 0's steps, not its API calls: their pools would
        # differ from rank 0's, so tables are given to the constructor there (`prompt_tables=`), which every
        # rank runs
        if self.cfg.mapping.world_size > 1:
            raise TrtGptError(f"{what}: on a multi-rank engine give the tables to the constructor "
                              "(LLM(..., prompt_tables={name: path}))")

    def remove_prompt_table(self, name: str) -> None:
        self._single_rank("remove_prompt_table")
        if self.prompt_pool is None:
            raise TrtGptError("remove_prompt_table: the engine was built without prompt tables")
        self.prompt_pool.remove(str(name))

    def _prompt_ids(self, ids: list[int], params: SamplingParams) -> list[int]:
        """The ids the model sees: virtual ids moved to the request's table rows in the pool."""
        if self.prompt_pool is None:
            if params.prompt_table is not None:
                raise TrtGptError(f"sampling: 'prompt_table' is {params.prompt_table!r} but the engine was built "
                                  "without prompt tables (--max_prompt_embedding_table_size)")
            return ids
        return self.prompt_pool.translate(ids, params.prompt_table, params.prompt_task)

    def _hold_table(self, seq: Sequence) -> None:
        if self.prompt_pool is not None and seq.params.prompt_table is not None:
            self.prompt_pool.acquire(seq.params.prompt_table)
            self._prompt_users[id(seq)] = seq.params.prompt_table

    def _drop_table(self, seq: Sequence) -> None:
        name = self._prompt_users.pop(id(seq), None)
        if name is not None:
            self.prompt_pool.release(name)

    # ------------------------------------------------------------------ requests
    def _encode(self, prompt: Prompt, add_special_tokens: bool = True) -> list[int]:
        ids = self.tokenizer.encode(prompt, add_special_tokens) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise TrtGptError("empty prompt: at least one token is needed")
        # ids >= vocab_size are virtual tokens where the engine has prompt tables (checked in _prompt_ids)
        top = self.cfg.vocab_size + (self.build.max_prompt_embedding_table_size or 0)
        bad = [t for t in ids if not 0 <= t < top]
        if bad:
            raise TrtGptError(f"token id {bad[0]} out of the vocabulary (0..{self.cfg.vocab_size - 1}"
                              + (f", virtual {self.cfg.vocab_size}..{top - 1}" if top > self.cfg.vocab_size else "")
                              + ")")
        if len(ids) > self.build.max_input_len:
            raise TrtGptError(f"prompt of {len(ids)} tokens exceeds the engine's max_input_len "
                              f"({self.build.max_input_len})")
        return ids

    def _window(self, params: SamplingParams) -> int | None:
        """The request's attention window: its own `max_attention_window_size` when given, smaller or larger
        than the model's sliding window (it overrides it, as the reference's does), else the model's."""
        w = params.max_attention_window_size or self.cfg.sliding_window
        # A window that covers the longest possible sequence changes nothing; keeping it None lets the
        # request share a forward with unwindowed ones.
        return None if w is None or w >= self.build.max_seq_len else w

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None,
                    add_special_tokens: bool = True) -> Sequence:
        """Queue one request; it runs from the next `step` on. Returns its live `Sequence`."""
        params = params or SamplingParams()
        params.validate(self.cfg.vocab_size)
        if params.num_beams > 1:
            if params.num_beams > self.build.max_beam_width:
                raise TrtGptError(f"num_beams {params.num_beams} exceeds the engine's max_beam_width "
                                  f"({self.build.max_beam_width}); rebuild with --max_beam_width")
            if params.stop_words:
                raise TrtGptError("stop_words are not supported with num_beams > 1 (beam search ends at end_id)")
        user_ids = self._encode(prompt, add_special_tokens)
        ids = self._prompt_ids(user_ids, params)
        room = self.build.max_seq_len - len(ids)
        if room < 1:
            raise TrtGptError(f"prompt of {len(ids)} tokens leaves no room under max_seq_len {self.build.max_seq_len}")
        if params.max_tokens > room:
            params = dataclasses.replace(params, max_tokens=room, min_tokens=min(params.min_tokens, room))
        # penalties see real tokens only (virtual ones are not vocabulary entries)
        state = RequestSamplingState(params, [t for t in ids if t < self.cfg.vocab_size])
        seq = Sequence(prompt_ids=ids, params=params, sampling=state, window=self._window(params))
        seq.output_ids = state.output_ids   # one list, appended to by check_stops
        if params.return_logits:
            seq.generation_logits = []
        if params.num_beams > 1:
            seq.beam_state = BeamSearchState(len(ids), params)
        seq.overlap_ok = overlap_ok(seq)
        if ids != user_ids:
            seq.user_prompt_ids = user_ids
        if self.lora is None and params.lora not in (None, -1, "-1"):
            raise TrtGptError(f"sampling: 'lora' is {params.lora!r} but the engine was built without LoRA")
        try:
            self._hold_table(seq)
            if self.lora is None or self.lora.admit(seq):   # else it waits for a LoRA slot (see step)
                self.scheduler.add(seq)
        except TrtGptError:
            self._forget(seq)      # a bad request fails alone, holding nothing
            raise
        return seq

    def add_lora(self, name: str, path: str | Path, source: str | None = None) -> None:
        """Load a LoRA adapter (PEFT dir, NeMo archive, ...) for requests naming it (`SamplingParams(lora=name)`);
        the running engine keeps its graphs: the adapter goes into a slot of the preallocated pool when used."""
        from ..lora.loading import load_lora

        if self.lora is None:
            raise TrtGptError("add_lora: the engine was built without LoRA (--max_lora_rank / --lora_dir at build)")
        if self.cfg.mapping.world_size > 1:
            raise TrtGptError("add_lora: a multi-rank engine takes the adapters given at build (--lora_dir) only")
        self.lora.add(str(name), load_lora(path, self.cfg, self.build.max_lora_rank, self.lora.pool.roles, source,
                                           name=str(name)))

    def remove_lora(self, name: str, when_idle: bool = False) -> None:
        """Drop an adapter. While requests use it (running or waiting for a slot) this raises, or with
        `when_idle=True` retires it: new requests cannot name it, those using it finish with it, and it is
        dropped when the last of them ends."""
        if self.lora is None:
            raise TrtGptError("remove_lora: the engine was built without LoRA")
        self.lora.remove(str(name), when_idle)

    def cancel(self, seq: Sequence) -> None:
        """Stop a request now and return its cache blocks."""
        if seq.status is Status.FINISHED:
            return
        self.scheduler.release(seq)
        self._forget(seq)
        seq.status, seq.finish_reason = Status.FINISHED, "cancelled"

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = Status.FINISHED, reason
        self.scheduler.release(seq)
        self._forget(seq)

    def _forget(self, seq: Sequence) -> None:
        """Release what a leaving request held: its LoRA slot, its prompt table."""
        for side in self.engine.side_inputs:
            side.forget(seq)
        self._drop_table(seq)

    @torch.inference_mode()  # the executor's logits are inference tensors; the sampler edits them in place
    def step(self) -> list[Sequence]:
        """Run one executor step; returns the requests that got a new token (or finished)."""
        if self.lora is not None:
            for seq in self.lora.ready():    # requests that waited for a LoRA slot
                self.scheduler.add(seq)
        batch = self.scheduler.schedule()
        done: list[Sequence] = []
        la = self.overlap
        if la is not None:
            if batch and la.eligible(batch):
                # enqueue this step, then read the previous one's tokens while the GPU runs it
                prev = la.launch(batch)
                return self._resolve(prev) if prev is not None else []
            prev = la.take()
            if prev is not None:
                # tokens still in flight must reach the host before a synchronous step packs its inputs
                done = self._resolve(prev)
                batch = [(s, n) for s, n in batch if s.status is not Status.FINISHED]
                if not batch:
                    return done
        if not batch:
            if self.scheduler.has_work:
                raise TrtGptError("scheduler made no progress: the KV cache is too small for any waiting request")
            return []
        hold = la is not None and la.holds(batch)   # read before the step advances num_computed
        logits = self.executor.step(batch)
        if hold:
            la.hold(batch, logits)
            return done
        return done + self._advance(batch, logits)

    def _resolve(self, step: PendingStep) -> list[Sequence]:
        seqs, tokens = OverlappedScheduler.tokens(step)
        self._append_tokens(seqs, tokens)
        return seqs

    def _append_tokens(self, seqs: list[Sequence], tokens: list[int]) -> None:
        """Record each sequence's new token and finish those that stop."""
        reasons = check_stops([s.sampling for s in seqs], tokens)
        max_len = self.build.max_seq_len
        for seq, reason in zip(seqs, reasons):
            if reason is None and len(seq.prompt_ids) + len(seq.output_ids) >= max_len:
                reason = "length"
            if reason is not None:
                self._finish(seq, reason)

    # ------------------------------------------------------------------ after the forward
    def _advance(self, batch: list[tuple[Sequence, int]], logits: torch.Tensor) -> list[Sequence]:
        """Sample for every request whose streams are all computed: rows of `logits` follow `batch`."""
        plain: list[Sequence] = []
        plain_rows: list[int] = []
        beam_rows: dict[int, list[int]] = {}      # beam requests only: rows of all their streams
        beam_reqs: dict[int, Sequence] = {}
        for i, (s, _) in enumerate(batch):
            if s.parent is None and s.beam_state is None:
                # A plain request is one stream, so one row: no grouping needed.
                if s.num_computed == len(s.prompt_ids) + len(s.output_ids):
                    plain.append(s)
                    plain_rows.append(i)
                continue                          # else a prompt chunk
            req = s.request
            beam_rows.setdefault(id(req), []).append(i)
            beam_reqs[id(req)] = req
        done: list[Sequence] = []
        for key, req in beam_reqs.items():
            if any(s.num_pending for s in req.streams):
                continue                          # beams still catching up
            self._beam_step(req, logits[torch.tensor(beam_rows[key], device=logits.device)])
            done.append(req)
        if plain:
            sub = logits if len(plain_rows) == logits.shape[0] else \
                logits[torch.tensor(plain_rows, device=logits.device)]
            states = [s.sampling for s in plain]
            if any(s.generation_logits is not None for s in plain):   # iterating `sub` costs an unbind
                for seq, row in zip(plain, sub):
                    if seq.generation_logits is not None:
                        seq.generation_logits.append(row.detach().cpu().clone())
            self._append_tokens(plain, process_and_sample(sub, states).tolist())
            done += plain
        return done

    def _beam_step(self, req: Sequence, logits: torch.Tensor) -> None:
        """One beam-search step: HF order (log-softmax, then the logits processors), pick, fork."""
        bs: BeamSearchState = req.beam_state
        old = req.streams
        logprobs = process_logits(torch.log_softmax(logits.float(), dim=-1), [s.sampling for s in old],
                                  inplace=True)
        src, tok = bs.step(logprobs)
        if bs.is_done:
            req.beam_results = bs.finalize()
            best = req.beam_results[0][0]
            req.output_ids[:] = best
            end = req.params.end_id
            self._finish(req, "end_id" if end is not None and best and best[-1] == end else "length")
            return
        if not req.beams:
            # Beam states never sample, so a fixed seed spares the global RNG a draw per beam.
            beam_params = dataclasses.replace(req.params, seed=0)
            for _ in range(bs.num_beams):
                st = RequestSamplingState(beam_params, req.sampling.prompt_ids)
                req.beams.append(Sequence(prompt_ids=req.prompt_ids, params=req.params, sampling=st,
                                          output_ids=st.output_ids, parent=req, window=req.window,
                                          request_id=req.request_id, arrival=req.arrival,
                                          status=Status.RUNNING))
        self.scheduler.fork_beams(req, old, src.tolist(), tok.tolist())
        req.output_ids[:] = req.beams[0].output_ids   # the running best, for streaming

    # ------------------------------------------------------------------ public API
    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self._tokenizer is not None else ""

    def _output(self, seq: Sequence, since: int = 0) -> RequestOutput:
        toks = list(seq.output_ids)
        out = RequestOutput(seq.request_id, list(seq.user_prompt_ids or seq.prompt_ids), toks, self._text(toks),
                            seq.finish_reason, seq.status is Status.FINISHED, toks[since:])
        if seq.beam_state is not None:
            if seq.beam_results is not None:
                out.beams = [list(t) for t, _ in seq.beam_results]
                out.beam_scores = [s for _, s in seq.beam_results]
            else:
                out.beams = [list(b.output_ids) for b in seq.beams] or [toks]
            out.beam_texts = [self._text(b) for b in out.beams]
        if seq.generation_logits is not None and seq.generation_logits:
            out.generation_logits = torch.stack(seq.generation_logits)
        return out

    def generate(self, prompts: Prompt | Seq[Prompt], params: SamplingParams | Seq[SamplingParams] | None = None,
                 add_special_tokens: bool = True) -> list[RequestOutput]:
        """Run prompts to completion; outputs in prompt order."""
        outs: dict[int, RequestOutput] = {}
        ids: list[int] = []     # this call's request ids (last_request_ids may be another thread's)
        for out in self._stream(prompts, params, add_special_tokens, ids):
            if out.finished:
                outs[out.request_id] = out
        return [outs[i] for i in ids]

    def generate_stream(self, prompts: Prompt | Seq[Prompt],
                        params: SamplingParams | Seq[SamplingParams] | None = None,
                        add_special_tokens: bool = True) -> Iterator[RequestOutput]:
        """Yield a RequestOutput for a request each time it gets new tokens (the last one has finished=True).

        Leaving the loop early cancels the requests that have not finished, returning their blocks.
        """
        return self._stream(prompts, params, add_special_tokens)

    def _stream(self, prompts: Prompt | Seq[Prompt], params: SamplingParams | Seq[SamplingParams] | None,
                add_special_tokens: bool, ids_out: list[int] | None = None) -> Iterator[RequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise TrtGptError(f"{len(params)} sampling params for {len(prompts)} prompts")
        if any(isinstance(p, str) for p in prompts):
            _ = self.tokenizer
        # One engine loop owns the steps, so interleaved or concurrent consumers each get all their tokens.
        from .engine_loop import EngineLoop

        yield from EngineLoop.of(self).stream_sync(prompts, params, add_special_tokens, ids_out)

    @torch.inference_mode()
    def score(self, token_lists: Seq[Seq[int]], prompt_table: str | None = None,
              prompt_task: int | None = None, lora: str | int | None = None) -> list[torch.Tensor]:
        """float32 logits [len, vocab] at every position of each token list (one packed prefill); ids >=
        vocab_size read `prompt_table` (task `prompt_task`) where given, and the LoRA adapter `lora` (a name
        or task uid) applies where given."""
        sp = SamplingParams(max_tokens=1, prompt_table=prompt_table, prompt_task=prompt_task, lora=lora)
        seqs = [Sequence(prompt_ids=self._prompt_ids(self._encode(t), sp), params=sp) for t in token_lists]
        outs: list[torch.Tensor] = []
        try:
            for seq in seqs:
                if self.lora is not None and not self.lora.admit(seq):
                    raise TrtGptError("score: every LoRA slot is held by running requests")
                if lora not in (None, -1, "-1") and self.lora is None:
                    raise TrtGptError(f"score: lora {lora!r} given but the engine was built without LoRA")
                if not self.scheduler.reserve_prompt(seq):
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
                self._forget(s)
        return outs
