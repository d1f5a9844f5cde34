"""The two sides `trt-gpt summarize` compares: the engine (`LLM`) and HF transformers on the same inputs.

Both take batches of token-id lists and return generated token ids (cut after the end token, which
is kept) or per-position logits, so timing and metrics are computed the same way for each.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import TrtGptError
from ..runtime.sampling_params import SamplingParams


@dataclass
class SideStats:
    """What one side produced, and how long generation took (model loading excluded)."""
    name: str
    outputs: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0
    batches: int = 0
    ppls: list[float] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(o) for o in self.outputs)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def latency_ms(self) -> float:
        """Mean wall time of one batch."""
        return 1000.0 * self.seconds / self.batches if self.batches else 0.0


def cut_at_end(tokens: list[int], end_id: int | None) -> list[int]:
    return tokens[:tokens.index(end_id) + 1] if end_id is not None and end_id in tokens else tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EngineRunner:
    name = "engine"

    def __init__(self, engine_dir: Path, device: str | None, tokenizer_dir: Path | None):
        from ..runtime.llm import LLM

        from ..runtime.distributed_llm import llm_factory

        # under mpirun/srun, ranks > 0 serve rank 0 inside this call and exit; rank 0 evaluates and prints
        self.llm = llm_factory(LLM)(engine_dir, device=device, tokenizer_dir=tokenizer_dir)
        self.device = self.llm.engine.device
        self.max_input_len = self.llm.build.max_input_len

    def generate(self, batch: Sequence[list[int]], params: SamplingParams) -> tuple[list[list[int]], float]:
        start = time.perf_counter()
        outs = self.llm.generate([list(b) for b in batch], params)
        return [o.token_ids for o in outs], time.perf_counter() - start

    def logits(self, batch: Sequence[list[int]]) -> tuple[list[torch.Tensor], float]:
        start = time.perf_counter()
        out = self.llm.score(batch)
        return out, time.perf_counter() - start


class HFRunner:
    name = "hf"

    def __init__(self, hf_model_dir: Path, device: str | None, dtype: str = "auto",
                 engine_dtype: str | None = None):
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from ..checkpoint import torch_dtype
        from ..runtime.engine import pick_device

        self.device = pick_device(device)
        if dtype == "auto":
            # The engine's precision where it is fast (GPU); float32 on CPU, where half is slow or missing.
            dtype = (engine_dtype or "float16") if self.device.type == "cuda" else "float32"
        # The CLI prints its own progress and a one-line error; HF's bars and notices would interleave.
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            self.model = AutoModelForCausalLM.from_pretrained(str(hf_model_dir), dtype=torch_dtype(dtype),
                                                              local_files_only=True).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise TrtGptError(f"{hf_model_dir}: cannot load the HF model ({str(e).splitlines()[0]})") from None

    def _padded(self, batch: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask, as HF generation expects for decoder-only models."""
        width = max(len(b) for b in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for i, b in enumerate(batch):
            ids[i, width - len(b):] = torch.tensor(b)
            mask[i, width - len(b):] = 1
        return ids.to(self.device), mask.to(self.device)

    def generate(self, batch: Sequence[list[int]], params: SamplingParams) -> tuple[list[list[int]], float]:
        end = params.end_id
        pad = params.pad_id if params.pad_id is not None else (end if end is not None else 0)
        ids, mask = self._padded(batch, pad)
        sampling = not params.is_greedy and params.num_beams == 1
        kw = dict(max_new_tokens=params.max_tokens, num_beams=params.num_beams, do_sample=sampling,
                  repetition_penalty=params.repetition_penalty, eos_token_id=end, pad_token_id=pad)
        if params.num_beams > 1:
            kw.update(length_penalty=params.length_penalty, early_stopping=params.early_stopping)
        if sampling:
            kw.update(temperature=params.temperature, top_k=params.top_k or None,
                      top_p=params.top_p if params.uses_top_p else 1.0)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        _sync(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=mask, **kw)
        rows = out[:, ids.shape[1]:].tolist()
        return [cut_at_end(r, end) for r in rows], time.perf_counter() - start

    def logits(self, batch: Sequence[list[int]]) -> tuple[list[torch.Tensor], float]:
        _sync(self.device)
        start = time.perf_counter()
        outs = []
        with torch.no_grad():
            for b in batch:       # one at a time: no padding to get wrong in a perplexity
                outs.append(self.model(torch.tensor([b], device=self.device)).logits[0].float().cpu())
        return outs, time.perf_counter() - start
