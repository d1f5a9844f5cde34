"""Per-request decoding options (`SamplingParams`) and their validation.

The defaults follow the reference runtime: `SamplingParams()` is greedy (`top_k=1`), `top_k=0` and
`top_p=0` (or 1) mean "filter disabled". `validate()` turns bad user input into a one-line
`TrtGptError` naming the field, so the CLI can print it without a traceback.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from trt_gpt.errors import TrtGptError

_MAX_SEED = 2**64 - 1


def _fail(field: str, value: object, expected: str) -> None:
    shown = repr(value)
    if len(shown) > 60:  # a long stop-word list would drown the message
        shown = shown[:57] + "..."
    raise TrtGptError(f"sampling: {field!r} is {shown}, expected {expected}")


def _is_int(value: object) -> bool:
    # bool is a subclass of int; `top_k=True` is a user mistake, not 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass
class SamplingParams:
    """Decoding options of one request.

    Fields (all optional):
      max_tokens: number of tokens to generate at most (>= 1).
      temperature: softmax temperature (>= 0; 0 means greedy).
      top_k: keep the k most likely tokens; 1 = greedy (the default), 0 = disabled.
      top_p: nucleus filter in (0, 1); 0 and 1 both mean disabled.
      repetition_penalty: HF/CTRL multiplicative penalty over prompt+output tokens (> 0; 1 = off).
      presence_penalty / frequency_penalty: OpenAI-style additive penalties over output tokens.
      min_tokens: `end_id` is banned until this many tokens have been generated.
      end_id / pad_id: end-of-sequence and padding token ids (None: the model's default).
      stop_words: token-id sequences that end generation when the output ends with one of them.
      bad_words: token-id sequences that may never be completed.
      seed: seed of this request's sampling generator (None: drawn from torch's global RNG).
      num_beams: beam width (1 = no beam search).
      length_penalty / early_stopping: beam-search scoring and stopping, HF semantics.
      max_attention_window_size: sliding attention window in tokens (None = full context).
      prompt_table / prompt_task: the prompt-tuning table (a name given to `LLM.add_prompt_table`) and its
        task (default 0) that the prompt's virtual ids (vocab_size + k: row k) read.
      return_logits: return the generation logits along with the tokens.
      lora: the LoRA adapter of this request: a name given to `LLM.add_lora`, or the task uid of an
        adapter built into the engine (int or digits; -1 or None = no adapter).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 1
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    end_id: int | None = None
    pad_id: int | None = None
    stop_words: list[list[int]] | None = None
    bad_words: list[list[int]] | None = None
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True
    max_attention_window_size: int | None = None
    prompt_table: str | None = None
    prompt_task: int | None = None
    return_logits: bool = False
    lora: str | int | None = None

    # ---- derived flags used by the sampler to skip work on default rows ----

    @property
    def is_greedy(self) -> bool:
        """Single-beam argmax decoding: `top_k == 1` or `temperature == 0`."""
        return (self.top_k == 1 or self.temperature == 0) and self.num_beams == 1

    @property
    def uses_top_k(self) -> bool:
        return self.top_k > 0

    @property
    def uses_top_p(self) -> bool:
        return 0.0 < self.top_p < 1.0

    @property
    def uses_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    # ---- validation ----

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        """Check every field; raise `TrtGptError` with a one-line message naming the first bad one.

        With `vocab_size`, token ids (end_id, pad_id, stop/bad words) must also be `< vocab_size`.
        Returns `self` so calls can be chained.
        """
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            _fail("max_tokens", self.max_tokens, "an integer >= 1")
        if not _is_real(self.temperature) or self.temperature < 0:
            _fail("temperature", self.temperature, "a number >= 0")
        if not _is_int(self.top_k) or self.top_k < 0:
            _fail("top_k", self.top_k, "an integer >= 0 (0 = disabled)")
        if not _is_real(self.top_p) or not 0.0 <= self.top_p <= 1.0:
            _fail("top_p", self.top_p, "0..1")
        if not _is_real(self.repetition_penalty) or self.repetition_penalty <= 0:
            _fail("repetition_penalty", self.repetition_penalty, "a number > 0 (1 = disabled)")
        for name in ("presence_penalty", "frequency_penalty", "length_penalty"):
            if not _is_real(getattr(self, name)):
                _fail(name, getattr(self, name), "a finite number")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            _fail("min_tokens", self.min_tokens, f"an integer in 0..max_tokens ({self.max_tokens})")
        ids = f"token ids in 0..{vocab_size - 1}" if vocab_size is not None else "token ids >= 0"
        for name in ("end_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not self._token_ok(value, vocab_size):
                _fail(name, value, f"None or one of the {ids}")
        for name in ("stop_words", "bad_words"):
            value = getattr(self, name)
            if value is None:
                continue
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(seq, (list, tuple)) and len(seq) > 0
                and all(self._token_ok(t, vocab_size) for t in seq)
                for seq in value)
            if not ok:
                _fail(name, value, f"None or a list of non-empty lists of {ids}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= _MAX_SEED):
            _fail("seed", self.seed, "None or an integer in 0..2**64-1")
        if not _is_int(self.num_beams) or self.num_beams < 1:
            _fail("num_beams", self.num_beams, "an integer >= 1")
        if not isinstance(self.early_stopping, bool):
            _fail("early_stopping", self.early_stopping, "true or false")
        w = self.max_attention_window_size
        if w is not None and (not _is_int(w) or w < 1):
            _fail("max_attention_window_size", w, "None or an integer >= 1")
        if self.prompt_table is not None and not isinstance(self.prompt_table, str):
            _fail("prompt_table", self.prompt_table, "None or the name of a loaded prompt table")
        if self.prompt_task is not None and (not _is_int(self.prompt_task) or self.prompt_task < 0):
            _fail("prompt_task", self.prompt_task, "None or an integer >= 0")
        if not isinstance(self.return_logits, bool):
            _fail("return_logits", self.return_logits, "true or false")
        return self

    @staticmethod
    def _token_ok(token: object, vocab_size: int | None) -> bool:
        return _is_int(token) and token >= 0 and (vocab_size is None or token < vocab_size)
