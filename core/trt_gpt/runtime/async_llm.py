"""The asyncio front end of the engine loop: `AsyncLLM.generate(...)` is an async iterator of updates.

Each request gets its own asyncio queue. The loop thread hands a step's updates to the event loop in one
wake-up (`_Dispatcher`), not one per request, and text is detokenized here, on the event loop's side, so
that it overlaps the engine's next step instead of lengthening it. A stop string found here ends the
request (cancelled in the engine at its next step). Leaving the iteration early (a client that went away,
a task cancelled) cancels the request, which frees its KV blocks at the engine's next step.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, AsyncIterator, Callable, Hashable, Sequence as Seq

from .detokenizer import TextStream
from .engine_loop import EngineLoop, RequestOptions, Update, new_request_id
from .sampling_params import SamplingParams


class _Dispatcher:
    """Moves updates from the loop thread into asyncio queues, one event-loop wake-up per batch."""

    def __init__(self, aloop: asyncio.AbstractEventLoop):
        self.aloop = aloop
        self.items: collections.deque = collections.deque()
        self.scheduled = False

    def put(self, q: "asyncio.Queue[Update]", up: Update) -> None:    # the loop thread
        self.items.append((q, up))
        if not self.scheduled:
            self.scheduled = True
            self.aloop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:                                       # the event loop
        # cleared before draining: an update appended meanwhile either is drained now or schedules a flush
        self.scheduled = False
        items = self.items
        while items:
            q, up = items.popleft()
            q.put_nowait(up)


class AsyncLLM:
    """Async access to an `LLM` (or `DistributedLLM` on rank 0); any number of concurrent requests."""

    def __init__(self, llm: Any):
        self.llm = llm
        self.loop = EngineLoop.of(llm)
        self._dispatchers: dict[int, _Dispatcher] = {}

    def encode(self, prompt: str | Seq[int], add_special_tokens: bool = True) -> list[int]:
        return self.loop.encode(prompt, add_special_tokens)

    def _dispatcher(self, aloop: asyncio.AbstractEventLoop) -> _Dispatcher:
        d = self._dispatchers.get(id(aloop))
        if d is None or d.aloop is not aloop or aloop.is_closed():
            d = self._dispatchers[id(aloop)] = _Dispatcher(aloop)
        return d

    async def add(self, prompt: str | Seq[int], params: SamplingParams | None = None, *,
                  request_id: Hashable | None = None, options: RequestOptions | None = None,
                  add_special_tokens: bool = True) -> "RequestStream":
        """Admit a request; returns its stream of updates. Bad input raises TrtGptError here, before any
        token. Whoever holds the stream must iterate it to the end or `aclose()` it."""
        ids = self.encode(prompt, add_special_tokens) if isinstance(prompt, str) else list(prompt)
        opts = options or RequestOptions()
        q: asyncio.Queue[Update] = asyncio.Queue()
        dispatch = self._dispatcher(asyncio.get_running_loop())

        def sink(up: Update) -> None:
            dispatch.put(q, up)

        key = request_id if request_id is not None else new_request_id("async")
        admitted = asyncio.wrap_future(self.loop.submit(ids, params or SamplingParams(), sink, key, opts))
        try:
            seq = await asyncio.shield(admitted)
        except asyncio.CancelledError:
            self.loop.cancel(key)             # the caller went away while the request was being admitted
            raise
        text = (opts.text_stream(self.llm.tokenizer, seq.prompt_ids)
                if opts.detokenize and seq.beam_state is None else None)
        return RequestStream(self, key, q, seq, text)

    async def generate(self, prompt: str | Seq[int], params: SamplingParams | None = None, *,
                       request_id: Hashable | None = None, options: RequestOptions | None = None,
                       add_special_tokens: bool = True) -> AsyncIterator[Update]:
        """Yield an `Update` each time the request advances; the last has finished=True. Bad input raises
        TrtGptError before the first update; a failed engine step raises its error. Leaving early cancels
        the request."""
        stream = await self.add(prompt, params, request_id=request_id, options=options,
                                add_special_tokens=add_special_tokens)
        try:
            async for up in stream:
                yield up
        finally:
            await stream.aclose()

    async def cancel(self, request_id: Hashable) -> bool:
        """End a request at the next step; False if it was not running."""
        return await asyncio.wrap_future(self.loop.cancel(request_id))

    async def call(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the engine loop's thread between steps (see `EngineLoop.call`)."""
        return await asyncio.wrap_future(self.loop.call(fn))

    async def wait_idle(self, timeout: float | None = None) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.loop.wait_idle, timeout)

    @property
    def num_requests(self) -> int:
        """Requests submitted and not finished."""
        return self.loop.num_tracked


class RequestStream:
    """The updates of one admitted request (an async iterator); `aclose()` before its end cancels it."""

    def __init__(self, engine: AsyncLLM, request_id: Hashable, q: "asyncio.Queue[Update]", seq: Any,
                 text: TextStream | None):
        self.engine, self.request_id, self._q, self.seq, self._text = engine, request_id, q, seq, text
        self.finished = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> Update:
        if self.finished:
            raise StopAsyncIteration
        up = await self._q.get()
        if up.error is not None:
            self.finished = True
            raise up.error
        if self._text is not None:
            up.text = self._text.add(up.token_ids, final=up.finished)
            if self._text.stopped is not None:
                if not up.finished:
                    self.engine.loop.cancel(self.request_id)   # the tokens made meanwhile are dropped
                up.finished, up.finish_reason = True, "stop"
        self.finished = up.finished
        return up

    async def aclose(self) -> None:
        if self.finished:
            return
        self.finished = True
        # shielded, so that a cancelled task still waits for the engine to drop the request (blocks freed)
        cancel = asyncio.wrap_future(self.engine.loop.cancel(self.request_id))
        try:
            await asyncio.shield(cancel)
        except asyncio.CancelledError:
            pass
