"""OpenAI request bodies (pydantic) and their translation into the runtime's SamplingParams.

Field names, defaults and ranges follow OpenAI's API: `temperature` 1 and `top_p` 1 (plain sampling) by
default, `temperature=0` is greedy. Extensions, as other OpenAI-compatible servers spell them: `top_k`,
`repetition_penalty`, `min_tokens`, `ignore_eos`, `use_beam_search` (with `best_of` beams). A field the
server does not implement (`suffix`, `logit_bias`, tools, ...) is rejected with a 400 naming it, never
ignored: unknown fields are forbidden.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..runtime.sampling_params import SamplingParams


class ApiError(Exception):
    """An error answered with OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both endpoints share."""
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None          # extension; -1 or 0: disabled
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0)] = 1.0   # extension
    min_tokens: Annotated[int, Field(ge=0)] = 0               # extension
    ignore_eos: bool = False                                  # extension
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int, end_id: int | None, choice: int,
                        lora: str | None = None) -> SamplingParams:
        """The runtime's params for choice `choice` of this request (choice i of a seeded request uses
        seed + i, so the n choices differ and each is reproducible on its own), with the LoRA adapter its
        `model` selected (None: the base model)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        top_k = self.top_k if self.top_k is not None and self.top_k > 0 else 0
        top_p = 0.0 if self.top_p is None or self.top_p >= 1 else self.top_p
        greedy = temperature == 0
        return SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_k=1 if greedy else top_k, top_p=top_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, min_tokens=min(self.min_tokens, max_tokens),
            end_id=None if self.ignore_eos else end_id,
            seed=None if self.seed is None else (self.seed + choice) % 2**64, lora=lora)


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], TokenIds, list[TokenIds]]
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None
    use_beam_search: bool = False                             # extension: best_of (or n) beams
    length_penalty: float = 1.0                               # extension, beam search

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ApiError(400, "prompt is empty", "prompt")
        if isinstance(p[0], int):
            return [list(p)]
        return list(p)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
