"""The asyncio front end of the engine loop: `AsyncLLM.generate(...)` is an async iterator of updates.

Each request gets its own asyncio queue, fed from the loop thread with `call_soon_threadsafe`; leaving
the iteration early (a client that went away, a task cancelled) cancels the request, which frees its KV
blocks at the engine's next step.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Hashable, Sequence as Seq

from .engine_loop import EngineLoop, RequestOptions, Update, new_request_id
from .sampling_params import SamplingParams


class AsyncLLM:
    """Async access to an `LLM` (or `DistributedLLM` on rank 0); any number of concurrent requests."""

    def __init__(self, llm: Any):
        self.llm = llm
        self.loop = EngineLoop.of(llm)

    def encode(self, prompt: str | Seq[int], add_special_tokens: bool = True) -> list[int]:
        return self.loop.encode(prompt, add_special_tokens)

    async def add(self, prompt: str | Seq[int], params: SamplingParams | None = None, *,
                  request_id: Hashable | None = None, options: RequestOptions | None = None,
                  add_special_tokens: bool = True) -> "RequestStream":
        """Admit a request; returns its stream of updates. Bad input raises TrtGptError here, before any
        token. Whoever holds the stream must iterate it to the end or `aclose()` it."""
        ids = self.encode(prompt, add_special_tokens) if isinstance(prompt, str) else list(prompt)
        aloop = asyncio.get_running_loop()
        q: asyncio.Queue[Update] = asyncio.Queue()

        def sink(up: Update) -> None:
            aloop.call_soon_threadsafe(q.put_nowait, up)

        key = request_id if request_id is not None else new_request_id("async")
        admitted = asyncio.wrap_future(self.loop.submit(ids, params or SamplingParams(), sink, key, options))
        try:
            seq = await asyncio.shield(admitted)
        except asyncio.CancelledError:
            self.loop.cancel(key)             # the caller went away while the request was being admitted
            raise
        return RequestStream(self, key, q, seq)

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

    async def wait_idle(self, timeout: float | None = None) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.loop.wait_idle, timeout)

    @property
    def num_requests(self) -> int:
        """Requests submitted and not finished."""
        return self.loop.num_tracked


class RequestStream:
    """The updates of one admitted request (an async iterator); `aclose()` before its end cancels it."""

    def __init__(self, engine: AsyncLLM, request_id: Hashable, q: "asyncio.Queue[Update]", seq: Any):
        self.engine, self.request_id, self._q, self.seq = engine, request_id, q, seq
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
