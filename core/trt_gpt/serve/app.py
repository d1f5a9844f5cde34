"""The HTTP routes of `trt-gpt serve` (FastAPI): OpenAI's completions, chat completions and models, plus
/health and /metrics; LoRA adapters are models of their own (serve/adapters.py).

Admission: a request takes one slot per choice; past `max_batch_size + max_queued_requests` slots it is
refused with 429 and `Retry-After`, so the queue never grows without bound. Errors are OpenAI's error
object naming the field. A client that disconnects has its requests cancelled (their KV blocks freed at
the engine's next step). Each request logs one line: id, endpoint, status, tokens in/out, latency.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..runtime.async_llm import AsyncLLM
from .adapters import add_adapter_routes
from .chat_template import ChatTemplate
from .metrics import CONTENT_TYPE, ServerMetrics
from .openai_api import Generation, chat_specs, completion_specs
from .protocol import ApiError, ChatCompletionRequest, CompletionRequest

log = logging.getLogger("trt_gpt.serve")


@dataclass
class ServeState:
    """What the routes share: the engine, its limits and the server's settings."""
    engine: AsyncLLM
    model_name: str
    chat_template: ChatTemplate
    max_queued_requests: int = 256
    api_key: str | None = None
    # the LoRA adapters served, each a model id of its own (its name in the engine), in load order
    adapters: list[str] = field(default_factory=list)
    lora_source: str | None = None      # --lora_ckpt_source for adapters loaded at run time
    in_flight: int = 0
    metrics: ServerMetrics = field(init=False)

    def __post_init__(self) -> None:
        llm = self.engine.llm
        self.llm, self.tokenizer = llm, llm.tokenizer
        self.vocab_size, self.max_seq_len = llm.cfg.vocab_size, llm.build.max_seq_len
        self.max_beam_width = llm.build.max_beam_width
        self.end_id = self.tokenizer.eos_token_id
        self.capacity = llm.scheduler.max_batch_size + self.max_queued_requests
        self.metrics = ServerMetrics(llm, lambda: self.in_flight)

    def models(self) -> list[str]:
        return [self.model_name, *self.adapters]

    def lora_of(self, model: str | None) -> str | None:
        """The engine adapter a request's `model` selects (None: the base model); unknown ids are a 404."""
        if model is None or model == self.model_name:
            return None
        if model in self.adapters:
            return model
        raise ApiError(404, f"model {model!r} does not exist (GET /v1/models lists them)", "model",
                       code="model_not_found")

    def acquire(self, n: int) -> None:
        """Take `n` slots (one per choice) or refuse with 429: the queue stays bounded."""
        if self.in_flight + n > self.capacity:
            self.metrics.rejected.inc()
            raise ApiError(429, f"the server is at its limit of {self.capacity} requests in flight "
                                f"(max_batch_size + --max_queued_requests); retry later", None,
                           "rate_limit_error", "queue_full", {"Retry-After": "1"})
        self.in_flight += n

    def release(self, n: int) -> None:
        self.in_flight -= n


class _EventStream(StreamingResponse):
    """SSE response that always runs `cleanup`: a client that leaves before the body starts would otherwise
    leave the body generator unstarted, its `finally` never run, and the admitted requests running."""

    def __init__(self, body: Any, cleanup: Callable[[], Any]):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._cleanup = cleanup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await asyncio.shield(self._cleanup())


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class _ApiKey:
    """Checks `Authorization: Bearer KEY` on /v1 routes. A plain ASGI middleware: starlette's
    BaseHTTPMiddleware would hide a client's disconnect from the routes behind it."""

    def __init__(self, app: Any, state: ServeState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        key = self.state.api_key
        if key is not None and scope["type"] == "http" and scope["path"].startswith("/v1"):
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, f"Bearer {key}".encode()):
                self.state.metrics.requests.labels(scope["path"], "401").inc()
                resp = _error(ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", None,
                                       "invalid_request_error", "invalid_api_key"))
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(state: ServeState) -> FastAPI:
    app = FastAPI(title="trt-gpt", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            state.metrics.requests.labels(request.url.path, "400").inc()
            return _error(ApiError(400, f"the body is not valid JSON ({err.get('msg', '')})", None))
        param = loc[0] if loc else None
        where = ".".join(loc) or "body"
        e = ApiError(400, f"{where}: {err.get('msg', 'invalid value')}", param)
        state.metrics.requests.labels(request.url.path, "400").inc()
        log.info("%s -> 400 (%s)", request.url.path, e.message)
        return _error(e)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.error("%s: %s: %s", request.url.path, type(e).__name__, e)
        return _error(ApiError(500, f"{type(e).__name__}: {e}", None, "server_error"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(ApiError(e.status_code, str(e.detail), None))

    app.add_middleware(_ApiKey, state=state)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "trt-gpt",
                                            "root": m, "parent": None if m == state.model_name else state.model_name}
                                           for m in state.models()]}

    add_adapter_routes(app, state)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _serve(state, request, "completion", body)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        return await _serve(state, request, "chat", body)

    return app


async def _serve(state: ServeState, request: Request, kind: str, req: Any) -> Response:
    endpoint = request.url.path
    start = time.perf_counter()
    try:
        lora = state.lora_of(req.model)
        specs = completion_specs(state, req, lora) if kind == "completion" else chat_specs(state, req, lora)
        gen = Generation(state, kind, req, specs)
        state.acquire(gen.num_choices)
    except ApiError as e:
        state.metrics.requests.labels(endpoint, str(e.status)).inc()
        log.info("%s %s -> %d (%s)", endpoint, getattr(req, "model", None) or "-", e.status, e.message)
        raise
    try:
        await gen.admit()
    except BaseException as e:
        state.release(gen.num_choices)
        status = e.status if isinstance(e, ApiError) else 500
        state.metrics.requests.labels(endpoint, str(status)).inc()
        raise

    finished: list[int] = []

    def done(status: int) -> None:
        if finished:        # once: from the stream's end or from the response's own cleanup
            return
        finished.append(status)
        state.release(gen.num_choices)
        state.metrics.requests.labels(endpoint, str(status)).inc()
        state.metrics.prompt_tokens.inc(gen.prompt_tokens)
        for c in gen.choices:
            state.metrics.observe_choice(gen.arrival, c.first, c.last, len(c.token_ids),
                                         c.finish_reason or "cancelled")
        reasons = ",".join(sorted({str(c.finish_reason) for c in gen.choices}))
        log.info("%s %s %d prompt_tokens=%d completion_tokens=%d latency=%.3fs finish=%s", gen.id, endpoint,
                 status, gen.prompt_tokens, gen.completion_tokens, time.perf_counter() - start, reasons)

    if req.stream:
        async def body():
            status = 499    # the client went away before the end
            try:
                async for piece in gen.sse():
                    yield piece
                status = 200
            finally:
                done(status)
        async def cleanup() -> None:
            await gen.close()        # idempotent: streams already at their end are left alone
            done(499)
        return _EventStream(body(), cleanup)

    async def collect() -> None:
        async for _ in gen.updates():
            pass

    task = asyncio.create_task(collect())
    status = 499
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.2)
            if not task.done() and await request.is_disconnected():
                task.cancel()           # cancels every choice: their blocks return at the next step
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return Response(status_code=499)
        task.result()
        status = 200
        return JSONResponse(gen.response())
    except ApiError as e:
        status = e.status
        raise
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        done(status)
