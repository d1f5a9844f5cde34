"""Logits processing, token sampling, stop checks and beam-search bookkeeping for one decode step.

Pure torch and device-agnostic: every function works on whatever device the logits live on. Each
row of a `[B, V]` logits tensor belongs to one request with its own `SamplingParams` and token
history (`RequestSamplingState`). Work is batched across the rows that need it; rows with default
parameters (greedy, no penalties) cost nothing beyond the final argmax.

Semantics follow HF transformers (the independent oracle of tests/runtime/test_sampling.py):
repetition penalty, bad words, min new tokens, temperature, top-k and top-p match HF's logits
processors and are applied in HF's order; presence/frequency penalties follow OpenAI/TRT-LLM
(additive, over output tokens only). Beam search (`BeamSearchState`) reproduces the vectorised
beam search of transformers 5.x (`GenerationMixin._beam_search`) for one request.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from trt_gpt.runtime.sampling_params import SamplingParams

FINISH_END_ID = "end_id"
FINISH_STOP_WORDS = "stop_words"
FINISH_LENGTH = "length"

# HF's "impossible" score offset: used with the same arithmetic so beam ordering matches bit for bit.
_NEG = -1.0e9


def _draw_seed() -> int:
    # Drawn from torch's default CPU generator, so requests differ from each other yet a whole run
    # is reproducible after `torch.manual_seed` (a plain process-wide counter would not be).
    return int(torch.randint(0, 2**62, (1,)).item())


class RequestSamplingState:
    """Sampling state of one request: params, token history and a private random generator.

    `prompt_ids` and `output_ids` are plain lists; `check_stop` appends each new token to
    `output_ids`. The generator is seeded from `params.seed` (or, when None, from a seed drawn from
    torch's global RNG when the state is built) and is created lazily on the logits' device.
    """

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int],
                 output_ids: Sequence[int] | None = None,
                 device: torch.device | str | None = None):
        self.params = params              # also derives the per-step flags below (see the setter)
        self.prompt_ids: list[int] = [int(t) for t in prompt_ids]
        self.output_ids: list[int] = [int(t) for t in output_ids] if output_ids else []
        self.seed: int = params.seed if params.seed is not None else _draw_seed()
        self.finish_reason: str | None = None
        # How many trailing output tokens belong to the stop condition (end_id or a stop word).
        self.num_stop_tokens: int = 0
        self._generator: torch.Generator | None = None
        if device is not None:
            self.generator(device)

    @property
    def params(self) -> SamplingParams:
        return self._params

    @params.setter
    def params(self, params: SamplingParams) -> None:
        # Flags read every step, derived once per params object: a batch of default rows then costs one
        # attribute test per row instead of a dozen property and field reads.
        self._params = params
        # Last tokens of the stop words: a set lookup rejects most steps without list slicing.
        self._stop_last = {w[-1] for w in params.stop_words} if params.stop_words else set()
        self.greedy: bool = params.is_greedy
        # No logits processor can ever apply (min_tokens' end_id ban is checked per step in `process_logits`).
        self.quiet: bool = (self.greedy and params.repetition_penalty == 1.0 and params.presence_penalty == 0.0
                            and params.frequency_penalty == 0.0 and not params.bad_words)
        self._min_ban: int = params.min_tokens if params.end_id is not None else 0
        self._end_id, self._max_tokens = params.end_id, params.max_tokens

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This request's generator on `device` (created and seeded on first use there)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self._generator is None or self._generator.device != device:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generator = g
        return self._generator

    @property
    def history(self) -> list[int]:
        return self.prompt_ids + self.output_ids


# --------------------------------------------------------------------------------------------
# logits processing
# --------------------------------------------------------------------------------------------

def _padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    """[R, L] int64 tensor of ragged id lists, padded with `pad` (an extra dropped vocab column)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.int64)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.as_tensor(r, dtype=torch.int64)
    return out.to(device, non_blocking=True)


def _row_values(values: list[float], logits: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=logits.dtype).to(logits.device, non_blocking=True)[:, None]


def _warps(p: SamplingParams) -> bool:
    # Temperature/top-k/top-p only shape the sampling distribution: greedy rows and beam requests
    # (HF beam search without do_sample) never see them.
    return not p.is_greedy and p.num_beams == 1


def _banned_tokens(state: RequestSamplingState) -> list[int]:
    """Tokens banned for this step by bad_words and min_tokens (HF NoBadWords / MinNewTokens)."""
    p = state.params
    banned: list[int] = []
    if p.bad_words:
        history = state.history
        for word in p.bad_words:
            if len(word) == 1:
                # HF drops a single-token bad word equal to EOS (it would make EOS unreachable).
                if word[0] != p.end_id:
                    banned.append(word[0])
            elif len(word) - 1 <= len(history) and history[len(history) - len(word) + 1:] == list(word[:-1]):
                banned.append(word[-1])
    if p.end_id is not None and len(state.output_ids) < p.min_tokens:
        banned.append(p.end_id)
    return banned


def process_logits(logits: torch.Tensor, states: Sequence[RequestSamplingState],
                   inplace: bool = False) -> torch.Tensor:
    """Apply every request's logits processors to `logits [B, V]` (row b <-> `states[b]`).

    Order (HF's): repetition penalty (prompt+output tokens; negative logits are multiplied, positive
    ones divided), presence/frequency penalties (output tokens only:
    `logit -= presence * (count > 0) + frequency * count`), bad words, min_tokens (bans `end_id`),
    then, for sampling rows only, temperature, top-k and top-p (filtered logits become -inf; top-k
    and top-p always keep at least one token). Greedy rows skip the three warpers, which cannot
    change their argmax. Returns `logits` itself when no row needs anything; otherwise a new tensor,
    or `logits` modified in place when `inplace=True`.
    """
    if logits.dim() != 2 or logits.shape[0] != len(states):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(states)} requests")
    # Rows where a processor may apply (inlined: this runs for every row of every step).
    busy = [i for i, st in enumerate(states) if not st.quiet or len(st.output_ids) < st._min_ban]
    if not busy:
        return logits                    # the common all-default batch: no per-row work at all
    vocab = logits.shape[1]
    rep, pen, ban_rows, ban_toks, temp, topk, topp = [], [], [], [], [], [], []
    for i in busy:
        st = states[i]
        p = st.params
        if p.repetition_penalty != 1.0:
            rep.append(i)
        if (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0) and st.output_ids:
            pen.append(i)
        if p.bad_words or (p.min_tokens and p.end_id is not None):
            banned = _banned_tokens(st)
            ban_rows += [i] * len(banned)
            ban_toks += banned
        if _warps(p):
            if p.temperature != 1.0:
                temp.append(i)
            if 0 < p.top_k < vocab:
                topk.append(i)
            if p.uses_top_p:
                topp.append(i)
    if not (rep or pen or ban_rows or temp or topk or topp):
        return logits

    out = logits if inplace else logits.clone()
    dev = out.device

    def index(rows: list[int]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.int64).to(dev, non_blocking=True)

    if rep:
        # HF trick: ids are clamped to an extra column V that is dropped afterwards.
        idx = index(rep)
        ids = _padded([states[i].history for i in rep], vocab, dev).clamp_(max=vocab)
        sub = torch.nn.functional.pad(out[idx], (0, 1))
        penalty = _row_values([states[i].params.repetition_penalty for i in rep], out)
        score = sub.gather(1, ids)
        score = torch.where(score < 0, score * penalty, score / penalty)
        out[idx] = sub.scatter(1, ids, score)[:, :vocab]
    if pen:
        idx = index(pen)
        ids = _padded([states[i].output_ids for i in pen], vocab, dev).clamp_(max=vocab)
        counts = torch.zeros(len(pen), vocab + 1, dtype=out.dtype, device=dev)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=out.dtype))
        counts = counts[:, :vocab]
        presence = _row_values([states[i].params.presence_penalty for i in pen], out)
        frequency = _row_values([states[i].params.frequency_penalty for i in pen], out)
        out[idx] -= presence * (counts > 0).to(out.dtype) + frequency * counts
    if ban_rows:
        out[index(ban_rows), index(ban_toks)] = float("-inf")
    if temp:
        idx = index(temp)
        out[idx] /= _row_values([states[i].params.temperature for i in temp], out)
    if topk:
        # One topk at the largest k; each row's threshold is its own k-th largest value.
        idx = index(topk)
        sub = out[idx]
        ks = torch.tensor([states[i].params.top_k for i in topk], dtype=torch.int64).to(dev)
        kth = torch.topk(sub, max(states[i].params.top_k for i in topk), dim=-1).values
        kth = kth.gather(1, (ks - 1)[:, None])
        out[idx] = sub.masked_fill(sub < kth, float("-inf"))
    if topp:
        idx = index(topp)
        sub = out[idx]
        sorted_logits, sorted_idx = torch.sort(sub, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # `1 - top_p` in double, then float32: the same threshold HF compares against.
        remove = cum <= _row_values([1 - states[i].params.top_p for i in topp], cum)
        remove[:, -1] = False
        remove = remove.scatter(1, sorted_idx, remove)
        out[idx] = sub.masked_fill(remove, float("-inf"))
    return out


def sample(logits: torch.Tensor, states: Sequence[RequestSamplingState]) -> torch.Tensor:
    """Pick one token per row of already-processed `logits [B, V]` (see `process_logits`).

    Greedy rows take the argmax; the others draw from `softmax(logits)` with their request's own
    generator, so a seeded request yields the same tokens whatever else shares the batch. Returns
    int64 `[B]` on the logits' device. Beam-search requests are driven by `BeamSearchState` instead.
    """
    tokens = logits.argmax(dim=-1)
    rows = [i for i, st in enumerate(states) if not st.greedy]
    if not rows:
        return tokens
    if any(states[i].params.num_beams > 1 for i in rows):
        raise ValueError("sample() got a beam-search request; use BeamSearchState")
    idx = torch.tensor(rows, dtype=torch.int64).to(logits.device)
    probs = torch.softmax(logits[idx].float(), dim=-1)
    drawn = [torch.multinomial(probs[j], 1, generator=states[i].generator(logits.device))
             for j, i in enumerate(rows)]
    tokens[idx] = torch.cat(drawn)
    return tokens


def process_and_sample(logits: torch.Tensor, states: Sequence[RequestSamplingState]) -> torch.Tensor:
    """`sample(process_logits(logits, states), states)`, processing in place."""
    return sample(process_logits(logits, states, inplace=True), states)


# --------------------------------------------------------------------------------------------
# stop conditions
# --------------------------------------------------------------------------------------------

def check_stop(state: RequestSamplingState, new_token: int) -> str | None:
    """Append `new_token` to `state.output_ids` and say whether the request is finished.

    Returns "end_id" (the token is `params.end_id`), "stop_words" (output_ids now ends with one of
    `params.stop_words`; a multi-token stop word must lie entirely inside the output, never partly
    in the prompt), "length" (`max_tokens` reached) or None, checked in that order; also stored in
    `state.finish_reason`. The matched tokens stay in `output_ids` (the reference includes stop
    words in its outputs by default): `state.num_stop_tokens` says how many trailing tokens belong
    to the stop condition (1 for end_id, len(word) for a stop word) and `trim_stop(state)` returns
    the output without them, for callers that want the TRT-LLM "exclude" behaviour.
    """
    return check_stops((state,), (new_token,))[0]


def check_stops(states: Sequence[RequestSamplingState], new_tokens: Sequence[int]) -> list[str | None]:
    """`check_stop` for many requests at once (one call per step instead of one per request)."""
    reasons: list[str | None] = []
    for state, token in zip(states, new_tokens):
        token = int(token)
        out = state.output_ids
        out.append(token)
        reason = None
        if token == state._end_id:       # never equal when end_id is None
            reason, state.num_stop_tokens = FINISH_END_ID, 1
        elif token in state._stop_last:  # empty without stop words: the scan runs only on a last-token hit
            for word in state.params.stop_words:
                n = len(word)
                if n <= len(out) and out[-n:] == list(word):
                    reason, state.num_stop_tokens = FINISH_STOP_WORDS, n
                    break
        if reason is None and len(out) >= state._max_tokens:
            reason = FINISH_LENGTH
        state.finish_reason = reason
        reasons.append(reason)
    return reasons


def trim_stop(state: RequestSamplingState) -> list[int]:
    """`output_ids` without the trailing end_id / stop-word tokens that finished the request."""
    n = state.num_stop_tokens if state.finish_reason in (FINISH_END_ID, FINISH_STOP_WORDS) else 0
    return state.output_ids[:len(state.output_ids) - n]


# --------------------------------------------------------------------------------------------
# beam search (one request; HF transformers 5.x `_beam_search` with batch size 1)
# --------------------------------------------------------------------------------------------

def beam_search_step(logprobs: torch.Tensor, beam_scores: torch.Tensor,
                     num_beams: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top `2 * num_beams` continuations over the flattened beam x vocab cumulative log-probs.

    `logprobs [num_beams, V]` are this step's log-probs per running beam, `beam_scores [num_beams]`
    their running sums. Returns `(next_tokens, source_beams, new_scores)`, each `[2 * num_beams]`,
    best first. Twice the beam width is kept so that `num_beams` beams can continue even if the
    best `num_beams` candidates all end (HF keeps `max(2, 1 + n_eos) * num_beams`, n_eos <= 1 here).
    """
    vocab = logprobs.shape[-1]
    acc = logprobs.float() + beam_scores[:, None]
    scores, flat = torch.topk(acc.reshape(1, -1), 2 * num_beams)  # HF's [batch, beams*V] shape
    scores, flat = scores[0], flat[0]
    return flat % vocab, flat // vocab, scores


class BeamHypotheses:
    """The `num_beams` best finished hypotheses of one request (HF 5.x semantics).

    A hypothesis that ended after `n` generated tokens (the end token included) with summed
    log-prob `s` scores `s / n ** length_penalty`: transformers 5.x divides by
    `cur_len + 1 - decoder_prompt_len`, the generated length alone, not prompt + generated.
    Slots are kept sorted best first; an empty slot scores -1e9.
    """

    def __init__(self, num_beams: int, max_new_tokens: int, length_penalty: float,
                 early_stopping: bool, device: torch.device):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.tokens = torch.zeros(num_beams, max_new_tokens, dtype=torch.int64, device=device)
        self.lengths = torch.zeros(num_beams, dtype=torch.int64, device=device)
        self.scores = torch.full((num_beams,), _NEG, dtype=torch.float32, device=device)
        self.filled = torch.zeros(num_beams, dtype=torch.bool, device=device)

    @property
    def is_full(self) -> bool:
        return bool(self.filled.all())

    def add(self, tokens: torch.Tensor, sum_logprobs: torch.Tensor, finished: torch.Tensor,
            gen_len: int, improvement_possible: bool) -> None:
        """Merge candidates `tokens [K, max_new]` / `sum_logprobs [K]` of length `gen_len`.

        Only rows with `finished` count; none does once all slots are filled with
        `early_stopping=True`, or once no running beam can beat the worst kept hypothesis.
        """
        scores = sum_logprobs / (gen_len ** self.length_penalty)
        # The same float32 additions as HF, so ties and near-ties resolve identically. (The "full"
        # gate never fires under BeamSearchState, which stops once full with early_stopping; it is
        # kept so the class stays HF-exact for any driver.)
        scores += float(self.is_full and self.early_stopping is True) * _NEG
        scores += float(not improvement_possible) * _NEG
        scores += (~finished) * _NEG
        merged = torch.cat((self.scores, scores))
        keep = torch.topk(merged, k=self.num_beams)[1]
        self.scores = merged[keep]
        self.tokens = torch.cat((self.tokens, tokens))[keep]
        lengths = torch.full_like(sum_logprobs, gen_len, dtype=torch.int64)
        self.lengths = torch.cat((self.lengths, lengths))[keep]
        self.filled = torch.cat((self.filled, finished))[keep]

    def can_improve(self, best_running_sum: torch.Tensor, cur_len: int) -> bool:
        """HF's early-stop heuristic: can the best running beam, scored at its current length,
        still beat the worst kept hypothesis? (True while a slot is empty.)"""
        best = best_running_sum / (cur_len ** self.length_penalty)
        worst = torch.where(self.filled, self.scores.min(), _NEG)
        return bool((best > worst).any())


class BeamSearchState:
    """Beam-search bookkeeping for one request, matching transformers 5.x `_beam_search`.

    The runtime drives it one decode step at a time:

        bs = BeamSearchState(prompt_len, params)        # params.num_beams = W > 1
        while not bs.is_done:
            logprobs = log_softmax(logits_of_running_beams)   # [W, V] (or [1, V] on the first step)
            src, tok = bs.step(logprobs)                # int64 [W] each
            # running beam j continues old beam src[j] (reorder the KV cache by src) + token tok[j]
        results = bs.finalize()                         # [(token_ids, score)], best first

    Semantics (HF, batch size 1): running beams start at score [0, -1e9, ...] so the first step
    expands only beam 0 (the W beams may share one prompt). Each step takes the top 2W candidates
    of `running_score + logprob` (`beam_search_step`). A candidate *finishes* when its token is
    `params.end_id` or it reaches `params.max_tokens` generated tokens; only finished candidates
    among the top W are offered to `BeamHypotheses` (score = sum_logprob / gen_len**length_penalty,
    gen_len counting generated tokens only, as transformers 5.x does). The W best unfinished
    candidates become the running beams. Before step n, `params.end_id` is banned while fewer than
    `params.min_tokens` tokens were generated (HF MinNewTokensLength). Sampling warpers and
    `stop_words` are not applied here.

    `is_done` becomes True when (a) every candidate of the step finished (e.g. max_tokens reached),
    (b) `early_stopping=True` and all W hypothesis slots are filled, or (c) the best running beam
    scored at its current length cannot beat the worst kept hypothesis. `prompt_len` is kept for
    the caller; the 5.x scores do not depend on it. `finalize()` returns the W hypotheses as
    (generated token ids incl. a final end_id, score), best first; called before `is_done` it
    fills empty slots with the running beams scored at the current length.
    """

    def __init__(self, prompt_len: int, params: SamplingParams):
        if params.num_beams < 1:
            raise ValueError("num_beams must be >= 1")
        self.prompt_len = prompt_len
        self.params = params
        self.num_beams = params.num_beams
        self.max_new_tokens = params.max_tokens
        self.end_id = params.end_id
        self.cur_len = 0            # tokens generated so far by the running beams
        self.is_done = False
        self._improvable = True     # HF's is_early_stop_heuristic_unsatisfied (sticky once False)
        self._running: torch.Tensor | None = None
        self._scores: torch.Tensor | None = None
        self.hyps: BeamHypotheses | None = None

    def _init(self, device: torch.device) -> None:
        w = self.num_beams
        self._running = torch.zeros(w, self.max_new_tokens, dtype=torch.int64, device=device)
        self._scores = torch.zeros(w, dtype=torch.float32, device=device)
        self._scores[1:] = _NEG
        self.hyps = BeamHypotheses(w, self.max_new_tokens, self.params.length_penalty,
                                   self.params.early_stopping, device)

    def step(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Consume `logprobs [W, V]` of the running beams; return `(source_beam_idx, next_tokens)`."""
        if self.is_done:
            raise RuntimeError("beam search already finished")
        w = self.num_beams
        if self._running is None:
            self._init(logprobs.device)
        if logprobs.shape[0] == 1 and w > 1:
            logprobs = logprobs.expand(w, -1)
        if logprobs.shape[0] != w:
            raise ValueError(f"expected logprobs for {w} beams, got {tuple(logprobs.shape)}")
        logprobs = logprobs.float()
        if self.end_id is not None and self.cur_len < self.params.min_tokens:
            logprobs = logprobs.clone()
            logprobs[:, self.end_id] = float("-inf")

        tokens, src, cand_scores = beam_search_step(logprobs, self._scores, w)
        cand = self._running[src]
        cand[:, self.cur_len] = tokens
        gen_len = self.cur_len + 1
        finished = torch.full_like(tokens, gen_len >= self.max_new_tokens, dtype=torch.bool)
        if self.end_id is not None:
            finished |= tokens == self.end_id

        # Running beams: the best W candidates that did not finish.
        running_scores = cand_scores + finished.to(torch.float32) * _NEG
        nxt = torch.topk(running_scores, k=w)[1]
        self._running, self._scores = cand[nxt], running_scores[nxt]
        src_out, tok_out = src[nxt], tokens[nxt]

        # Finished hypotheses: only those among the top W candidates count.
        top_w = torch.zeros_like(finished)
        top_w[:w] = True
        self.hyps.add(cand, cand_scores, finished & top_w, gen_len, self._improvable)

        self.cur_len = gen_len
        self._improvable = self._improvable and self.hyps.can_improve(self._scores[0], gen_len)
        all_full = self.hyps.is_full and self.params.early_stopping is True
        self.is_done = not self._improvable or all_full or bool(finished.all())
        return src_out, tok_out

    @property
    def running_tokens(self) -> list[list[int]]:
        """Generated tokens of each running beam so far."""
        if self._running is None:
            return [[] for _ in range(self.num_beams)]
        return self._running[:, :self.cur_len].tolist()

    def finalize(self) -> list[tuple[list[int], float]]:
        """The W best hypotheses as (generated token ids, score), best first."""
        if self.hyps is None:
            return []
        rows = [(self.hyps.tokens[i, :n].tolist(), float(s))
                for i, (n, s, f) in enumerate(zip(self.hyps.lengths.tolist(), self.hyps.scores.tolist(),
                                                  self.hyps.filled.tolist())) if f]
        if len(rows) < self.num_beams and self.cur_len > 0:
            # Stopped early by the caller: fall back on the running beams, scored like hypotheses.
            div = self.cur_len ** self.params.length_penalty
            rows += [(toks, float(s) / div)
                     for toks, s in zip(self.running_tokens, self._scores.tolist())]
            rows.sort(key=lambda r: r[1], reverse=True)
        return rows[:self.num_beams]
