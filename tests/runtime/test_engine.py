"""Engine loading choices: the attention an engine runs (fused kernels, or the unfused reference when it was
built with `--context_fmha disable`)."""
from __future__ import annotations

import pytest
import torch


def test_context_fmha_disable_picks_the_unfused_attention(monkeypatch):
    """Where the fused (Triton) attention would run, an engine built with --context_fmha disable runs the torch
    reference (no Triton prefill kernel); asking for Triton on such an engine is an error."""
    pytest.importorskip("triton")
    from trt_gpt.errors import TrtGptError
    from trt_gpt.runtime.engine import engine_attention_backend

    monkeypatch.setenv("TRITON_INTERPRET", "1")   # lets the Triton backend be chosen for a "cuda" device on CPU
    monkeypatch.delenv("TRT_GPT_ATTENTION_BACKEND", raising=False)
    cuda = torch.device("cuda")
    assert engine_attention_backend(cuda, torch.float16, True, context_fmha=True).name == "triton"
    assert engine_attention_backend(cuda, torch.float16, True, context_fmha=False).name == "torch"
    monkeypatch.setenv("TRT_GPT_ATTENTION_BACKEND", "triton")
    with pytest.raises(TrtGptError, match="context_fmha disable"):
        engine_attention_backend(cuda, torch.float16, True, context_fmha=False)
