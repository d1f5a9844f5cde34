"""trt-gpt: GPT-family models from published checkpoints to fast inference on PyTorch + Triton.

Public API: `LLM`, `SamplingParams`. Everything else is reachable through the CLI (`trt-gpt --help`).
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # Lazy so `trt-gpt variants list` does not pay for importing the runtime.
    if name == "LLM":
        from .runtime.llm import LLM

        return LLM
    if name == "SamplingParams":
        from .runtime.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(name)
