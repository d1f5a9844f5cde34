"""The small-batch fused path (model/fused_layers.py: fused GEMV kernels + fused RoPE/cache write) computes
the model's function: HF transformers' logits and greedy tokens for GPT-2 and StarCoder2 checkpoints, and
the module path (itself HF-verified per variant) for the configurations no tiny HF model here has (gated
MLP, rmsnorm, layernorm1p, residual multipliers, no biases). Triton kernels run interpreted without a GPU."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Starcoder2Config, Starcoder2ForCausalLM

from trt_gpt.config import ModelConfig
from trt_gpt.model import GPTForCausalLM
from trt_gpt.kernels.metadata import AttentionMetadata
from trt_gpt.testing import assert_parity, engine_from_checkpoint, random_prompts, save_tiny

from fused_cases import CONFIGS, DEVICE, random_model, fused_env  # noqa: F401  (fixture)

pytest.importorskip("triton")

HF_MODELS = {
    "gpt2": (GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=64,
                                         initializer_range=0.2, bos_token_id=0, eos_token_id=0)),
    "starcoder2-gqa": (Starcoder2ForCausalLM, Starcoder2Config(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        vocab_size=97, max_position_embeddings=64, initializer_range=0.2, bos_token_id=0, eos_token_id=0)),
}


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_fused_path_matches_hf(tmp_path, fused_env, monkeypatch, name):
    from trt_gpt import LLM

    cls, cfg = HF_MODELS[name]
    hf = save_tiny(cls, cfg, tmp_path / "hf")
    engine = engine_from_checkpoint(tmp_path / "hf", tmp_path, max_input_len=16, max_seq_len=32, max_batch_size=2)
    llm = LLM(engine, device=DEVICE)
    fused = llm.engine.model.fused
    assert fused is not None
    layers, heads = [], []
    orig_layer, orig_head = fused.layer, fused.head
    fused.layer = lambda *a, **k: layers.append(1) or orig_layer(*a, **k)
    fused.head = lambda lm, hidden, *a, **k: heads.append(hidden.shape[0]) or orig_head(lm, hidden, *a, **k)
    # One at a time: scoring, prefill, then two decode steps. The 3-token prompt is within the fused path's
    # 4 rows, so all of it takes the fused layers. The 11-token prompt's scoring and prefill run the module
    # path's layers, and its prefill then the fused head on its one last-token row.
    for prompt in random_prompts(97, [3, 11], seed=2):
        assert_parity(hf, engine, [prompt], n_greedy=3, llm=llm, atol=1e-4)
    assert len(layers) == 2 * (1 + 1 + 2) + 2 * 2
    assert heads == [3, 1, 1, 1, 1, 1, 1]


def test_fused_head_picks_feed_overlapped_decoding(tmp_path, fused_env, monkeypatch):
    # The decode graphs' protocol (eager: no capture) with the fused path: the lm_head's epilogue leaves
    # the greedy picks that the next step embeds on the device. The tokens must still be HF's.
    from trt_gpt import LLM, SamplingParams
    from trt_gpt.kernels import triton_argmax
    from trt_gpt.testing import hf_greedy

    monkeypatch.setenv("TRT_GPT_CUDA_GRAPHS", "eager")
    finished = []
    real = triton_argmax.finish_argmax
    monkeypatch.setattr(triton_argmax, "finish_argmax", lambda *a: finished.append(1) or real(*a))
    import trt_gpt.kernels.triton_gemv as gemv
    monkeypatch.setattr(gemv, "finish_argmax", triton_argmax.finish_argmax)
    cls, cfg = HF_MODELS["gpt2"]
    hf = save_tiny(cls, cfg, tmp_path / "hf")
    engine = engine_from_checkpoint(tmp_path / "hf", tmp_path, max_input_len=16, max_seq_len=32, max_batch_size=2)
    llm = LLM(engine, device=DEVICE)
    assert llm.executor.graphs is not None and llm.engine.model.fused is not None
    prompt = random_prompts(97, [5], seed=4)[0]
    out = llm.generate([prompt], SamplingParams(max_tokens=6, min_tokens=6, end_id=0))[0]
    assert out.token_ids == hf_greedy(hf, prompt, 6)
    assert len(finished) >= 5      # every decode step's picks came from the fused head


def _two_steps(model, cfg, prompt_len: int, fused: bool) -> torch.Tensor:
    """Logits of a prompt step and one decode step on a fresh cache, on the fused path or the module path."""
    saved = model.fused
    model.fused = saved if fused else None
    try:
        kv_dtype = {"INT8": torch.int8, "FP8": torch.float8_e4m3fn}.get(cfg.quantization.kv_cache_quant_algo,
                                                                         torch.float32)
        kv = [(torch.zeros(4, 2, 8, 16, device=DEVICE, dtype=kv_dtype),
               torch.zeros(4, 2, 8, 16, device=DEVICE, dtype=kv_dtype)) for _ in range(cfg.num_hidden_layers)]
        i32 = dict(dtype=torch.int32, device=DEVICE)
        n = prompt_len
        slots = [16 + p if p < 8 else p - 8 for p in range(n + 1)]   # block table [2, 0], 8 slots a block
        meta = AttentionMetadata(cu_q_lens=torch.tensor([0, n], **i32), context_lens=torch.tensor([n], **i32),
                                 block_tables=torch.tensor([[2, 0]], **i32),
                                 slot_mapping=torch.tensor(slots[:n], **i32), max_q_len=n, max_context_len=n,
                                 q_lens_host=[n], context_lens_host=[n])
        ids = torch.tensor([(5 + 7 * i) % 61 for i in range(n)], device=DEVICE)
        first = model(ids, torch.arange(n, device=DEVICE), meta, kv)
        meta = AttentionMetadata(cu_q_lens=torch.tensor([0, 1], **i32), context_lens=torch.tensor([n + 1], **i32),
                                 block_tables=torch.tensor([[2, 0]], **i32),
                                 slot_mapping=torch.tensor(slots[n:], **i32), max_q_len=1,
                                 max_context_len=n + 1, q_lens_host=[1], context_lens_host=[n + 1])
        second = model(torch.tensor([7], device=DEVICE), torch.tensor([n], device=DEVICE), meta, kv)
        return torch.cat([first, second])
    finally:
        model.fused = saved


# 3: the prompt step takes the fused layers too; 12: the prompt runs the module path's layers, then the fused
# decode step reads two cache blocks
@pytest.mark.parametrize("prompt_len", [3, 12])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_path_matches_module_path(fused_env, name, prompt_len):
    cfg = ModelConfig(vocab_size=61, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=40, max_position_embeddings=32, **CONFIGS[name])
    model = random_model(cfg)
    assert model.fused is not None
    ref, got = _two_steps(model, cfg, prompt_len, False), _two_steps(model, cfg, prompt_len, True)
    assert ref.abs().max() > 0.1
    assert (ref - got).abs().max().item() <= 1e-4


# weight formats and 8-bit caches on the fused path: each format's own small-batch kernel (the weight-only
# GEMV with its fused norm / activation / residual), the gate and the cache write done apart where the
# format's kernel has no epilogue for them
QUANTIZED = {
    "int4 g8, gated": ("swiglu rmsnorm no-bias", dict(quant_algo="W4A16_GPTQ", group_size=8)),
    "int8, int8 cache, learned positions": ("layernorm1p residual-multiplier",
                                            dict(quant_algo="W8A16", kv_cache_quant_algo="INT8")),
    "int4 per channel, fp8 cache, rope": ("squared-relu rope", dict(quant_algo="W4A16", kv_cache_quant_algo="FP8")),
    "float weights, int8 cache": ("layernorm1p residual-multiplier", dict(kv_cache_quant_algo="INT8")),
    "fp8, fp8 cache, gated": ("swiglu rmsnorm no-bias", dict(quant_algo="FP8", kv_cache_quant_algo="FP8")),
    "fp8, learned positions": ("layernorm1p residual-multiplier", dict(quant_algo="FP8")),
}


@pytest.mark.parametrize("prompt_len", [3, 12])
@pytest.mark.parametrize("name", list(QUANTIZED))
def test_fused_path_matches_module_path_quantized(fused_env, name, prompt_len):
    from trt_gpt.config import QuantConfig

    base, quant = QUANTIZED[name]
    cfg = ModelConfig(vocab_size=61, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=40, max_position_embeddings=32,
                      quantization=QuantConfig(**quant), **CONFIGS[base])
    model = random_model(cfg)
    assert model.fused is not None
    calls = []
    for layer in model.transformer.layers:
        m = layer.mlp.proj.method
        real = m.small_batch
        m.small_batch = lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k)
    ref, got = _two_steps(model, cfg, prompt_len, False), _two_steps(model, cfg, prompt_len, True)
    assert calls, "the fused path did not run"
    assert ref.abs().max() > 0.1
    assert (ref - got).abs().max().item() <= 1e-4


def test_bad_rows_setting_and_gemv_table_are_engine_load_errors(tmp_path, fused_env, monkeypatch):
    from trt_gpt.errors import TrtGptError
    from trt_gpt.kernels.backends import get_attention_backend
    from trt_gpt.kernels import gemv_configs
    from trt_gpt.model.fused_layers import FusedLayers

    cfg = ModelConfig(vocab_size=61, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                      intermediate_size=40, max_position_embeddings=32)
    with torch.device("meta"):
        model = GPTForCausalLM(cfg)
    backend = get_attention_backend(DEVICE, torch.float32)
    assert FusedLayers.create(model, backend) is not None
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "four")
    with pytest.raises(TrtGptError, match="TRT_GPT_FUSED_DECODE_ROWS='four': expected a non-negative integer"):
        FusedLayers.create(model, backend)
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "0")
    assert FusedLayers.create(model, backend) is None
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "1")
    bad = tmp_path / "gemv.json"
    bad.write_text('{"1,3072": [1]}')
    monkeypatch.setenv("TRT_GPT_GEMV_CONFIGS", str(bad))
    monkeypatch.setattr(gemv_configs, "_loaded_from", [])
    with pytest.raises(TrtGptError, match="TRT_GPT_GEMV_CONFIGS=.*gemv.json"):
        FusedLayers.create(model, backend)
