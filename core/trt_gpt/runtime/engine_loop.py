"""The engine loop: the one owner of `LLM.step`, serving requests submitted by id from any thread.

Callers `submit` a request with a sink (a callable) and get back a future of its `Sequence`; a thread of
the loop's own admits submitted requests, runs the scheduler and executor step by step, and after each
step hands every request that advanced an `Update` through its sink. An update carries the tokens the
request produced since its previous update, computed from the request's own output at that moment, so
nothing is lost or sent twice however the consumers interleave. `cancel(request_id)` removes a request
at the next step and frees its KV blocks.

The thread runs while there is work and exits after `linger` seconds idle (it holds the LLM, so a loop
that outlived its work would keep the engine and its KV cache alive); the next submission starts a new
one. Requests added by hand (`LLM.add_request` + `LLM.step`) are not the loop's: do not step by hand
while the loop has requests.

The sync front end (`LLM.generate`, `LLM.generate_stream`) is `stream_sync` here; the async one is
runtime/async_llm.py; the HTTP server sits on the async one.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence as Seq

import torch

from ..errors import TrtGptError
from .detokenizer import TextStream
from .sampling_params import SamplingParams
from .sequence import Sequence

_keys = itertools.count()
LOOP_ATTR = "_engine_loop"


def new_request_id(prefix: str = "req") -> str:
    """A request id no other request of this process has."""
    return f"{prefix}-{next(_keys)}"


@dataclass
class TokenLogprob:
    """Log-probability of a generated token under the model's raw distribution (log-softmax of the
    logits, before temperature and penalties), and the `top` most likely tokens at that position."""
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class RequestOptions:
    """What a request wants besides its tokens. The loop computes logprobs and snapshots; the front ends
    detokenize and match stop strings on their own side (`TextStream`), off the step's critical path."""
    detokenize: bool = False            # text deltas (incremental; needs the tokenizer)
    stop: Seq[str] = ()                 # stop strings (text): the output ends before the first one found
    logprobs: int | None = None         # per-token logprobs with this many top alternatives (0: none)
    snapshots: bool = False             # attach a RequestOutput to beam updates and to the last one (sync API)

    def text_stream(self, tokenizer: Any, prompt_ids: Seq[int]) -> TextStream | None:
        return TextStream(tokenizer, prompt_ids, self.stop) if self.detokenize else None


@dataclass
class Update:
    """What a request produced since its previous update."""
    request_id: Hashable
    token_ids: list[int]                # new tokens (beam search: empty until the end; see `output`)
    text: str = ""                      # new text (filled by the front end with RequestOptions.detokenize)
    finished: bool = False
    finish_reason: str | None = None    # end_id, stop_words, stop (a stop string), length, cancelled
    logprobs: list[TokenLogprob] | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    output: Any = None                  # RequestOutput (RequestOptions.snapshots)
    error: BaseException | None = None  # the step failed: the request is over


@dataclass(eq=False)
class _Tracked:
    key: Hashable
    seq: Sequence
    sink: Callable[[Update], None]
    opts: RequestOptions
    emitted: int = 0                    # output tokens handed out so far


class EngineLoop:
    """Serves an `LLM` from a thread of its own; `EngineLoop.of(llm)` is the llm's one loop."""

    def __init__(self, llm: Any, linger: float = 0.5):
        self.llm = llm
        self.linger = linger
        self._cv = threading.Condition()
        self._inbox: collections.deque = collections.deque()
        self._tracked: dict[Hashable, _Tracked] = {}     # by request id; the loop thread's own
        self._by_seq: dict[int, _Tracked] = {}
        self._thread: threading.Thread | None = None
        self.num_tracked = 0                 # requests submitted and not yet finished (any thread may read)

    @classmethod
    def of(cls, llm: Any) -> "EngineLoop":
        loop = llm.__dict__.get(LOOP_ATTR)
        if loop is None:
            loop = llm.__dict__.setdefault(LOOP_ATTR, cls(llm))
        return loop

    # ------------------------------------------------------------------ any thread
    def encode(self, prompt: str | Seq[int], add_special_tokens: bool = True) -> list[int]:
        """Token ids of a prompt, validated (vocabulary, max_input_len); raises TrtGptError."""
        return self.llm._encode(prompt, add_special_tokens)

    def submit(self, prompt_ids: Seq[int], params: SamplingParams, sink: Callable[[Update], None],
               request_id: Hashable | None = None,
               options: RequestOptions | None = None) -> concurrent.futures.Future:
        """Queue a request; the future resolves to its Sequence once the loop has admitted it (or to the
        TrtGptError that `LLM.add_request` raised for it)."""
        opts = options or RequestOptions()
        if opts.logprobs is not None and not params.return_logits:
            params = dataclasses.replace(params, return_logits=True)   # the rows the logprobs come from
        key = request_id if request_id is not None else new_request_id()
        return self._post("submit", (key, list(prompt_ids), params, sink, opts))

    def cancel(self, request_id: Hashable) -> concurrent.futures.Future:
        """End a request at the next step (its KV blocks freed); resolves to whether it was running."""
        return self._post("cancel", (request_id,))

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn()` on the loop thread between two steps (the `LLM` is not thread-safe: adding or removing
        an adapter or a table goes through here while requests run); resolves to its result or error."""
        return self._post("call", (fn,))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no submitted request is left; True unless the timeout passed."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._inbox and not self._tracked, timeout)

    def _post(self, kind: str, args: tuple) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._inbox.append((kind, args, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="trt-gpt-engine-loop", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return fut

    # ------------------------------------------------------------------ the loop thread
    def _run(self) -> None:
        dev = getattr(getattr(self.llm, "engine", None), "device", None)
        if isinstance(dev, torch.device) and dev.type == "cuda":
            # the current CUDA device is per thread; kernels and generators created here follow it
            torch.cuda.set_device(dev)
        while True:
            with self._cv:
                while not self._inbox and not self._tracked:
                    self._cv.notify_all()            # wait_idle
                    if not self._cv.wait(self.linger) and not self._inbox:
                        self._thread = None
                        return
                cmds = list(self._inbox)
                self._inbox.clear()
            for kind, args, fut in cmds:
                try:
                    fut.set_result(self._submit(*args) if kind == "submit" else
                                   self._cancel(*args) if kind == "cancel" else args[0]())
                except BaseException as e:   # reported to the caller, the loop goes on
                    fut.set_exception(e)
            if self._tracked:
                try:
                    self._step()
                except BaseException as e:   # the step or an update failed: never leave a consumer waiting
                    self._fail_all(e)

    def _submit(self, key: Hashable, ids: list[int], params: SamplingParams, sink: Callable[[Update], None],
                opts: RequestOptions) -> Sequence:
        if key in self._tracked:
            raise TrtGptError(f"request id {key!r} is already running")
        seq = self.llm.add_request(ids, params)
        tr = _Tracked(key, seq, sink, opts)
        self._tracked[key] = tr
        self._by_seq[id(seq)] = tr
        self.num_tracked = len(self._tracked)
        return seq

    def _cancel(self, key: Hashable) -> bool:
        tr = self._tracked.get(key)
        if tr is None:
            return False
        self.llm.cancel(tr.seq)
        self._emit(tr)
        return True

    def _forget(self, tr: _Tracked) -> None:
        self._tracked.pop(tr.key, None)
        self._by_seq.pop(id(tr.seq), None)
        self.num_tracked = len(self._tracked)

    def _fail_all(self, e: BaseException) -> None:
        """A failed step leaves the batch in an unknown state: end every request of the loop with the error."""
        for tr in list(self._tracked.values()):
            try:
                self.llm.cancel(tr.seq)
            except Exception:
                pass
            self._forget(tr)
            self._send(tr, Update(tr.key, [], finished=True, finish_reason="error", error=e))

    def _step(self) -> None:
        stepped = self.llm.step()
        for seq in stepped:
            tr = self._by_seq.get(id(seq))
            if tr is not None:
                self._emit(tr)
        for tr in list(self._tracked.values()):
            if tr.seq.is_finished:           # ended without being stepped (cancelled by hand)
                self._emit(tr)

    def _emit(self, tr: _Tracked) -> None:
        llm, seq, opts = self.llm, tr.seq, tr.opts
        out = seq.output_ids
        beams = seq.beam_state is not None
        new = [] if beams else out[tr.emitted:]
        since, tr.emitted = tr.emitted, len(out)
        finished = seq.is_finished
        up = Update(tr.key, new, "", finished, seq.finish_reason, None, len(seq.prompt_ids), len(out))
        if opts.logprobs is not None and new:
            up.logprobs = self._logprobs(seq, new, opts.logprobs)
        if opts.snapshots and (finished or beams):
            up.output = llm._output(seq, since)    # the finished output as generate returns it
        if finished:
            self._forget(tr)
        self._send(tr, up)

    def _send(self, tr: _Tracked, up: Update) -> None:
        try:
            tr.sink(up)
        except Exception:
            # the consumer is gone (its event loop closed): nobody reads this request any more
            if not up.finished:
                self.llm.cancel(tr.seq)
                self._forget(tr)

    @staticmethod
    def _logprobs(seq: Sequence, new: list[int], top: int) -> list[TokenLogprob]:
        rows = seq.generation_logits or []
        # rows are appended one per sampled token; those of tokens already reported were dropped below
        rows, seq.generation_logits[:] = rows[-len(new):], []
        lp = torch.log_softmax(torch.stack(rows).float(), dim=-1)
        chosen = lp.gather(1, torch.tensor(new).unsqueeze(1)).squeeze(1).tolist()
        res = [TokenLogprob(t, c) for t, c in zip(new, chosen)]
        if top > 0:
            vals, idx = lp.topk(min(top, lp.shape[-1]), dim=-1)
            for r, v, i in zip(res, vals.tolist(), idx.tolist()):
                r.top = list(zip(i, v))
        return res

    # ------------------------------------------------------------------ the sync front end
    def stream_sync(self, prompts: Seq[str | Seq[int]], params: Seq[SamplingParams],
                    add_special_tokens: bool = True, ids_out: list[int] | None = None) -> Iterator[Any]:
        """`LLM.generate_stream`: a RequestOutput each time one of these requests advances (the last one
        of each with finished=True); leaving early cancels the unfinished ones and frees their blocks."""
        from .llm import RequestOutput

        ids = [self.encode(p, add_special_tokens) for p in prompts]   # bad input raises before anything runs
        opts = RequestOptions(detokenize=self.llm._tokenizer is not None, snapshots=True)
        q: queue.SimpleQueue = queue.SimpleQueue()
        keys = [new_request_id("sync") for _ in ids]
        futs = [self.submit(i, p, q.put, k, opts) for i, p, k in zip(ids, params, keys)]
        pending = set(keys)
        try:
            seqs = {k: f.result() for k, f in zip(keys, futs)}
            rids = [s.request_id for s in seqs.values()]
            self.llm.last_request_ids = rids
            if ids_out is not None:
                ids_out[:] = rids
            texts = {k: opts.text_stream(self.llm.tokenizer, i) if opts.detokenize else None
                     for k, i in zip(keys, ids)}
            sofar: dict[Hashable, tuple[list[int], str]] = {k: ([], "") for k in keys}
            while pending:
                up = q.get()
                if up.error is not None:
                    raise up.error
                if up.finished:
                    pending.discard(up.request_id)
                if up.output is not None:
                    yield up.output
                    continue
                toks, text = sofar[up.request_id]
                toks += up.token_ids
                ts = texts[up.request_id]
                text += ts.add(up.token_ids) if ts is not None else ""
                sofar[up.request_id] = (toks, text)
                seq = seqs[up.request_id]
                yield RequestOutput(seq.request_id, list(seq.prompt_ids), list(toks), text, None, False,
                                    up.token_ids)
        finally:
            # also when a submission failed: the others that got in are cancelled
            waits = [self.cancel(k) for k in keys if k in pending]
            for w in waits:
                w.result()
