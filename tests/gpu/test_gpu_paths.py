"""GPU fast path against the CPU reference path (skipped without CUDA): Triton attention, CUDA-graph decode,
fp32 logits of the whole model within 1e-3 of the CPU path, fp16 within 1e-2 relative."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTBigCodeConfig, GPTBigCodeForCausalLM, Starcoder2Config, \
    Starcoder2ForCausalLM

from trt_gpt.testing import engine_from_checkpoint, random_prompts, save_tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MODELS = {
    "gpt2-mha": (GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=512, n_positions=256,
                                            initializer_range=0.2)),
    "bigcode-mqa": (GPTBigCodeForCausalLM, GPTBigCodeConfig(n_layer=2, n_embd=128, n_head=4, vocab_size=512,
                                                           n_positions=256, multi_query=True,
                                                           initializer_range=0.2)),
    "starcoder2-gqa-window": (Starcoder2ForCausalLM, Starcoder2Config(
        num_hidden_layers=2, hidden_size=128, num_attention_heads=8, num_key_value_heads=2, intermediate_size=256,
        vocab_size=512, max_position_embeddings=512, sliding_window=24, initializer_range=0.2)),
}


@pytest.fixture(scope="module", params=list(MODELS))
def engines(request, tmp_path_factory):
    cls, cfg = MODELS[request.param]
    t = tmp_path_factory.mktemp(request.param)
    save_tiny(cls, cfg, t / "hf")
    fp32 = engine_from_checkpoint(t / "hf", t / "fp32", dtype="float32", max_input_len=128, max_seq_len=256,
                                  max_batch_size=8)
    fp16 = engine_from_checkpoint(t / "hf", t / "fp16", dtype="float16", max_input_len=128, max_seq_len=256,
                                  max_batch_size=8)
    return fp32, fp16


def test_gpu_logits_and_greedy_equal_cpu(engines):
    from trt_gpt import LLM, SamplingParams

    fp32, fp16 = engines
    prompts = random_prompts(512, [5, 40, 77, 1, 100], seed=1)
    cpu = LLM(fp32, device="cpu")
    gpu = LLM(fp32, device="cuda")
    assert gpu.engine.model.backend.name == "triton"
    assert gpu.executor.graphs is not None
    for ref, got in zip(cpu.score(prompts), gpu.score(prompts)):
        assert (ref - got).abs().max().item() <= 1e-3
    params = SamplingParams(max_tokens=40)
    assert [o.token_ids for o in gpu.generate(prompts, params)] == [o.token_ids for o in cpu.generate(prompts, params)]
    half = LLM(fp16, device="cuda")
    for ref, got in zip(cpu.score(prompts), half.score(prompts)):
        rel = ((ref - got).norm() / ref.norm()).item()
        assert rel <= 1e-2, rel


def test_gpu_overlap_fused_and_prefill_graphs_equal_cpu(engines):
    """Batch-1 serving on the GPU takes every fast path at once (fused GEMV decode, overlapped decoding,
    captured prefill graphs for a repeated prompt shape) and still yields the CPU path's greedy tokens."""
    from trt_gpt import LLM, SamplingParams

    fp32, _ = engines
    cpu = LLM(fp32, device="cpu")
    gpu = LLM(fp32, device="cuda")
    assert gpu.overlap is not None and gpu.engine.model.fused is not None
    assert gpu.executor.prefill_graphs is not None
    params = SamplingParams(max_tokens=24)
    for p in random_prompts(512, [33, 33, 33, 33], seed=7):
        assert gpu.generate([p], params)[0].token_ids == cpu.generate([p], params)[0].token_ids
    assert gpu.executor.prefill_graphs.replays == 3      # sightings 2-4 of the one prompt shape
    assert all(graph is not None for _, graph, _ in gpu.executor.prefill_graphs.entries.values())


def test_gpu_early_release_and_prefetched_tiles_equal_cpu(engines, monkeypatch):
    """Every fused GEMV with the tile options the tuned H200 table uses (dependents released as the kernel
    starts, two K tiles loaded before the wait; K = 128 or 512 takes two tiles or two plus a loop):
    batch-1 overlapped decoding through the CUDA graphs, staged inputs included, still yields the CPU path's
    greedy tokens."""
    from trt_gpt import LLM, SamplingParams
    from trt_gpt.kernels import triton_gemv
    from trt_gpt.kernels.gemv_configs import GemvConfig

    monkeypatch.setenv("TRT_GPT_PDL", "1")
    forced = GemvConfig(block_n=4, block_k=64, num_warps=4, num_stages=1, early_release=True, prefetch_tiles=2)
    monkeypatch.setattr(triton_gemv, "gemv_config", lambda *args: forced)
    fp32, _ = engines
    cpu = LLM(fp32, device="cpu")
    gpu = LLM(fp32, device="cuda")
    assert gpu.overlap is not None and gpu.engine.model.fused is not None and gpu.executor.graphs.staged_sizes
    params = SamplingParams(max_tokens=30)
    for p in random_prompts(512, [9, 40], seed=3):
        assert gpu.generate([p], params)[0].token_ids == cpu.generate([p], params)[0].token_ids


@pytest.mark.parametrize("name", list(MODELS))
def test_gpu_bf16_engine_tracks_fp32(tmp_path, name):
    """A bfloat16 engine on the GPU (Triton attention, fused batch-1 decode, graphs) stays within bf16's
    precision of the fp32 CPU path, for prefill logits and for decode-step logits."""
    from trt_gpt import LLM, SamplingParams

    cls, cfg = MODELS[name]
    save_tiny(cls, cfg, tmp_path / "hf")
    kw = dict(max_input_len=128, max_seq_len=256, max_batch_size=8)
    fp32 = engine_from_checkpoint(tmp_path / "hf", tmp_path / "fp32", dtype="float32", **kw)
    bf16 = engine_from_checkpoint(tmp_path / "hf", tmp_path / "bf16", dtype="bfloat16", **kw)
    cpu, gpu = LLM(fp32, device="cpu"), LLM(bf16, device="cuda")
    assert gpu.engine.model.fused is not None and gpu.executor.graphs is not None
    prompts = random_prompts(512, [5, 40, 1, 77], seed=3)
    for ref, got in zip(cpu.score(prompts), gpu.score(prompts)):
        assert ((ref - got).norm() / ref.norm()).item() <= 3e-2
    params = SamplingParams(max_tokens=8, return_logits=True)   # logits out: the synchronous graph path
    for p in prompts[:2]:
        ref = cpu.generate([p], params)[0]
        got = gpu.generate([p], params)[0]
        n = next((i for i, (a, b) in enumerate(zip(ref.token_ids, got.token_ids)) if a != b), len(ref.token_ids))
        a, b = ref.generation_logits[:max(n, 1)], got.generation_logits[:max(n, 1)].float()
        assert ((a - b).norm() / a.norm()).item() <= 3e-2   # compared while both followed the same tokens
