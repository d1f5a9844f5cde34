"""The OpenAI endpoints' work: a request's choices on the engine, and the responses built from their updates.

A request becomes one engine request per choice (per prompt x `n`; a beam-search request is one engine
request whose best `n` beams are the choices). Every choice is admitted before anything is answered, so a
bad prompt is a 400, not a broken stream. Streamed responses interleave the choices' chunks as the engine
produces them (Server-Sent Events, then `data: [DONE]`); non-streamed ones wait for every choice.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ..errors import TrtGptError
from ..runtime.engine_loop import RequestOptions, TokenLogprob, Update
from ..runtime.sampling_params import SamplingParams
from .protocol import ApiError, ChatCompletionRequest, CompletionRequest

FINISH = {"length": "length", "end_id": "stop", "stop_words": "stop", "stop": "stop"}


@dataclass
class Spec:
    """One engine request of an HTTP request."""
    index: int                       # first choice index it answers
    prompt_ids: list[int]
    params: SamplingParams
    options: RequestOptions
    prefix: str = ""                 # echo: the prompt text
    beams: int = 0                   # beam search: how many beams become choices


@dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    first: float | None = None
    last: float | None = None


class Generation:
    """One HTTP request's engine requests, admitted together."""

    def __init__(self, state: Any, kind: str, req: CompletionRequest | ChatCompletionRequest, specs: list[Spec]):
        self.state, self.kind, self.req, self.specs = state, kind, req, specs
        self.id = ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = req.model or state.model_name      # an adapter's id when the request named one
        self.arrival = time.perf_counter()
        self.num_choices = sum(s.beams or 1 for s in specs)
        self.choices = [Choice(i) for i in range(self.num_choices)]
        self.prompt_tokens = sum(len(s.prompt_ids) for s in specs if s.index % req.n == 0 or s.beams)
        self.streams: list[Any] = []

    # ------------------------------------------------------------------ the engine side
    async def admit(self) -> None:
        engine = self.state.engine
        results = await asyncio.gather(*(engine.add(s.prompt_ids, s.params, request_id=f"{self.id}-{s.index}",
                                                    options=s.options) for s in self.specs),
                                       return_exceptions=True)
        self.streams = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            e = errors[0]
            if isinstance(e, TrtGptError):
                raise ApiError(400, str(e), "messages" if self.kind == "chat" else "prompt")
            raise e

    async def close(self) -> None:
        for s in self.streams:
            await s.aclose()

    async def updates(self) -> AsyncIterator[tuple[Spec, Update]]:
        """Every choice's updates as they come; records them in `self.choices`."""
        q: asyncio.Queue = asyncio.Queue()

        async def pump(spec: Spec, stream: Any) -> None:
            try:
                async for up in stream:
                    q.put_nowait((spec, up))
            except BaseException as e:
                q.put_nowait((spec, e))
            finally:
                q.put_nowait((spec, None))

        tasks = [asyncio.create_task(pump(sp, st)) for sp, st in zip(self.specs, self.streams)]
        left = len(tasks)
        try:
            while left:
                spec, up = await q.get()
                if up is None:
                    left -= 1
                    continue
                if isinstance(up, BaseException):
                    raise up
                self._record(spec, up)
                yield spec, up
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()

    def _record(self, spec: Spec, up: Update) -> None:
        now = time.perf_counter()
        if spec.beams:
            if up.finished and up.output is not None:
                for k, (toks, text) in enumerate(zip(up.output.beams[:spec.beams], up.output.beam_texts)):
                    c = self.choices[spec.index + k]
                    c.token_ids, c.text = list(toks), spec.prefix + text
                    c.finish_reason, c.first, c.last = FINISH.get(up.finish_reason), now, now
            return
        c = self.choices[spec.index]
        if up.token_ids:
            c.first = c.first or now
            c.last = now
        if not c.token_ids and spec.prefix and not c.text:
            c.text = spec.prefix
        c.token_ids += up.token_ids
        c.text += up.text
        c.logprobs += up.logprobs or []
        if up.finished:
            c.finish_reason = FINISH.get(up.finish_reason)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    # ------------------------------------------------------------------ responses
    def response(self) -> dict:
        """The non-streamed body, once every choice has finished."""
        choices = []
        for c in self.choices:
            if self.kind == "completion":
                choices.append({"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
                                "logprobs": self._completion_logprobs(c.logprobs, len(self._prefix(c)))
                                if self.req.logprobs is not None else None})
            else:
                choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text},
                                "finish_reason": c.finish_reason,
                                "logprobs": self._chat_logprobs(c.logprobs) if self.req.logprobs else None})
        return {"id": self.id, "object": "text_completion" if self.kind == "completion" else "chat.completion",
                "created": self.created, "model": self.model, "system_fingerprint": None,
                "choices": choices, "usage": self.usage()}

    def _prefix(self, c: Choice) -> str:
        spec = next(s for s in self.specs if s.index <= c.index < s.index + (s.beams or 1))
        return spec.prefix

    async def sse(self) -> AsyncIterator[str]:
        """The streamed body: a chunk per choice update that has text, logprobs or an end; [DONE] last."""
        usage = self.req.include_usage
        obj = "text_completion" if self.kind == "completion" else "chat.completion.chunk"

        def chunk(choices: list[dict], with_usage: dict | None = None) -> str:
            body = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                    "system_fingerprint": None, "choices": choices}
            if usage:
                body["usage"] = with_usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        if self.kind == "chat":
            for c in self.choices:
                yield chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
        offsets = {c.index: 0 for c in self.choices}
        async for spec, up in self.updates():
            c = self.choices[spec.index]
            text = up.text
            if self.kind == "completion" and spec.prefix and offsets[c.index] == 0 and (text or up.finished
                                                                                        or up.logprobs):
                text = spec.prefix + text
            if not (text or up.logprobs or up.finished):
                continue
            reason = FINISH.get(up.finish_reason) if up.finished else None
            if self.kind == "completion":
                lp = (self._completion_logprobs(up.logprobs or [], offsets[c.index])
                      if self.req.logprobs is not None else None)
                yield chunk([{"index": c.index, "text": text, "logprobs": lp, "finish_reason": reason}])
            else:
                lp = self._chat_logprobs(up.logprobs or []) if self.req.logprobs else None
                yield chunk([{"index": c.index, "delta": {"content": text} if text else {}, "logprobs": lp,
                              "finish_reason": reason}])
            offsets[c.index] += len(text)
        if usage:
            yield chunk([], self.usage())
        yield "data: [DONE]\n\n"

    # ------------------------------------------------------------------ logprobs in OpenAI's shapes
    def _token(self, t: int) -> str:
        return self.state.tokenizer.decode([t])

    def _completion_logprobs(self, lps: list[TokenLogprob], offset: int) -> dict:
        tokens, offsets = [], []
        for lp in lps:
            s = self._token(lp.token_id)
            tokens.append(s)
            offsets.append(offset)
            offset += len(s)
        top = [{self._token(t): v for t, v in lp.top} for lp in lps] if self.req.logprobs else None
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps], "top_logprobs": top,
                "text_offset": offsets}

    def _chat_logprobs(self, lps: list[TokenLogprob]) -> dict:
        def entry(t: int, v: float) -> dict:
            s = self._token(t)
            return {"token": s, "logprob": v, "bytes": list(s.encode("utf-8"))}

        return {"content": [entry(lp.token_id, lp.logprob) | {"top_logprobs": [entry(t, v) for t, v in lp.top]}
                            for lp in lps]}


# ---------------------------------------------------------------------- requests -> engine requests
def _max_tokens(state: Any, requested: int | None, default: int | None, prompt_len: int, field_name: str) -> int:
    room = state.max_seq_len - prompt_len
    if room < 1:
        raise ApiError(400, f"the prompt has {prompt_len} tokens, which leaves no room under the engine's "
                            f"max_seq_len ({state.max_seq_len})", field_name)
    if requested is None:
        return min(default or room, room)
    if requested > room:
        raise ApiError(400, f"max_tokens is {requested} but the prompt of {prompt_len} tokens leaves room for "
                            f"{room} under the engine's max_seq_len ({state.max_seq_len})", "max_tokens")
    return requested


def _encode(state: Any, prompt: str | list[int], add_special_tokens: bool, field_name: str) -> list[int]:
    try:
        return state.engine.encode(prompt, add_special_tokens)
    except TrtGptError as e:
        raise ApiError(400, str(e), field_name) from None


def _check_params(params: SamplingParams, vocab_size: int) -> None:
    try:
        params.validate(vocab_size)
    except TrtGptError as e:
        field_name = str(e).split("'")[1] if "'" in str(e) else None
        raise ApiError(400, str(e), field_name) from None


def completion_specs(state: Any, req: CompletionRequest, lora: str | None = None) -> list[Spec]:
    if req.echo and req.logprobs is not None:
        raise ApiError(400, "echo with logprobs is not supported (prompt logprobs are not computed)", "echo")
    beams = req.best_of or req.n if req.use_beam_search else 0
    if req.use_beam_search:
        if req.n > beams:
            raise ApiError(400, f"n ({req.n}) exceeds best_of ({beams})", "n")
        for name, bad in (("stream", req.stream), ("stop", req.stop), ("logprobs", req.logprobs is not None)):
            if bad:
                raise ApiError(400, f"{name} is not supported with use_beam_search", name)
    elif req.best_of is not None and req.best_of != req.n:
        raise ApiError(400, "best_of other than n needs use_beam_search (sampled best_of is not implemented)",
                       "best_of")
    specs: list[Spec] = []
    for p_i, prompt in enumerate(req.prompts()):
        ids = _encode(state, prompt, True, "prompt")
        mt = _max_tokens(state, req.max_tokens, 16, len(ids), "prompt")
        prefix = ((prompt if isinstance(prompt, str) else state.tokenizer.decode(ids)) if req.echo else "")
        opts = RequestOptions(detokenize=True, stop=req.stop_list, logprobs=req.logprobs)
        if beams:
            params = req.sampling_params(mt, state.end_id, 0, lora)
            params.num_beams, params.length_penalty = beams, req.length_penalty
            params.top_k, params.temperature, params.seed = 0, 1.0, None
            _check_params(params, state.vocab_size)
            if beams > state.max_beam_width:
                raise ApiError(400, f"best_of {beams} exceeds the engine's max_beam_width ({state.max_beam_width})",
                               "best_of")
            specs.append(Spec(p_i * req.n, ids, params, RequestOptions(snapshots=True), prefix, beams=req.n))
            continue
        for j in range(req.n):
            params = req.sampling_params(mt, state.end_id, j, lora)
            _check_params(params, state.vocab_size)
            specs.append(Spec(p_i * req.n + j, ids, params, opts, prefix))
    return specs


def chat_specs(state: Any, req: ChatCompletionRequest, lora: str | None = None) -> list[Spec]:
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    messages = [{"role": m.role, "content": m.text()} | ({"name": m.name} if m.name else {}) for m in req.messages]
    try:
        text = state.chat_template.render(messages, state.tokenizer)
    except ValueError as e:
        raise ApiError(400, str(e), "messages") from None
    ids = _encode(state, text, False, "messages")
    mt = _max_tokens(state, req.limit(), None, len(ids), "messages")
    opts = RequestOptions(detokenize=True, stop=req.stop_list,
                          logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    specs = []
    for j in range(req.n):
        params = req.sampling_params(mt, state.end_id, j, lora)
        _check_params(params, state.vocab_size)
        specs.append(Spec(j, ids, params, opts))
    return specs
