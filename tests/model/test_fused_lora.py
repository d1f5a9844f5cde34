"""LoRA adapters on the small-batch fused path (model/fused_layers.py): a model with the runtime's slot pool
attached decodes on the fused path as it does on the module path (itself PEFT-verified in
tests/runtime/test_lora_pool.py), for steps mixing two adapters and a row without one. Float layers take
the adapter inside the GEMV (row shrink + LoRA epilogue, with the K/V write epilogue on qkv and the gate
fused or, with its own adapter, apart); weight-only and FP8 layers run it beside their kernel. Triton
kernels run interpreted without a GPU."""
from __future__ import annotations

import pytest
import torch

from fused_cases import CONFIGS, DEVICE, random_model, fused_env  # noqa: F401  (fixture)

from trt_gpt.config import BuildConfig, ModelConfig, QuantConfig
from trt_gpt.kernels.metadata import AttentionMetadata
from trt_gpt.runtime.lora_pool import LoraPool

pytest.importorskip("triton")

SLOTS = [0, -1, 1]   # one adapter per sequence of the step; the middle one has none


def attach_pool(model, targets: list[str] | None = None) -> LoraPool:
    """The runtime's slot pool on `model` with two random rank-4 adapters (slots 0 and 1) on every target."""
    pool = LoraPool(model, BuildConfig(max_lora_rank=4, lora_target_modules=targets), 2, 16,
                    torch.device(DEVICE), torch.float32)
    g = torch.Generator().manual_seed(11)
    for slot in (0, 1):
        pool.write(slot, {key: (torch.randn(4, a.shape[2], generator=g) * 0.3,
                                torch.randn(b.shape[1], 4, generator=g) * 0.3)
                          for key, (a, b) in pool.tensors.items()})
    return pool


def _meta(lens: list[int], ctx: list[int], slot_of) -> AttentionMetadata:
    i32 = dict(dtype=torch.int32, device=DEVICE)
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    slots = [slot_of(b, p) for b, (n, c) in enumerate(zip(lens, ctx)) for p in range(c - n, c)]
    return AttentionMetadata(cu_q_lens=torch.tensor(cu, **i32), context_lens=torch.tensor(ctx, **i32),
                             block_tables=torch.tensor([[2 * b, 2 * b + 1] for b in range(len(lens))], **i32),
                             slot_mapping=torch.tensor(slots, **i32), max_q_len=max(lens), max_context_len=max(ctx),
                             q_lens_host=list(lens), context_lens_host=list(ctx))


def _steps(model, cfg, pool, prompt_lens: list[int], fused: bool, slots=SLOTS) -> torch.Tensor:
    """Logits of a prompt step of three sequences and one decode step of the three on a fresh cache, on the
    fused path or the module path; sequence b uses adapter slot slots[b]."""
    saved = model.fused
    model.fused = saved if fused else None
    try:
        kv = [(torch.zeros(6, 2, 8, 16, device=DEVICE), torch.zeros(6, 2, 8, 16, device=DEVICE))
              for _ in range(cfg.num_hidden_layers)]
        slot_of = lambda b, p: (2 * b + p // 8) * 8 + p % 8   # noqa: E731  (block table [2b, 2b + 1])
        ids = torch.tensor([(5 + 7 * i) % 61 for i in range(sum(prompt_lens))], device=DEVICE)
        pos = torch.cat([torch.arange(n) for n in prompt_lens]).to(DEVICE)
        pool.stage([s for s, n in zip(slots, prompt_lens) for _ in range(n)], 4)
        first = model(ids, pos, _meta(prompt_lens, prompt_lens, slot_of), kv)
        pool.stage(list(slots), 4)
        second = model(torch.tensor([7, 11, 13], device=DEVICE), torch.tensor(prompt_lens, device=DEVICE),
                       _meta([1, 1, 1], [n + 1 for n in prompt_lens], slot_of), kv)
        return torch.cat([first, second])
    finally:
        model.fused = saved


CASES = {
    # learned positions and a float cache: qkv's delta goes through the K/V write epilogue
    "float, layernorm1p, kv-write epilogue": ("layernorm1p residual-multiplier", {}, None),
    # gated: fc's delta in the fused-gate GEMV (the gate has no adapter)
    "float, gated, gate without adapter": ("swiglu rmsnorm no-bias", {},
                                           ["attn_qkv", "attn_dense", "mlp_h_to_4h", "mlp_4h_to_h"]),
    # gated with an adapter on the gate too: the gate runs as its own GEMV with its own epilogue
    "float, gated, gate with adapter": ("swiglu rmsnorm no-bias", {}, None),
    "float, rope": ("squared-relu rope", {}, None),
    "int8 weight-only": ("layernorm1p residual-multiplier", dict(quant_algo="W8A16"), None),
    "fp8, gated": ("swiglu rmsnorm no-bias", dict(quant_algo="FP8"), None),
}


# [1, 1, 1]: the prompt step takes the fused layers too (3 rows); [5, 4, 3]: it runs the module path's layers
@pytest.mark.parametrize("prompt_lens", [[1, 1, 1], [5, 4, 3]], ids=["fused-prompt", "module-prompt"])
@pytest.mark.parametrize("name", list(CASES))
def test_lora_on_fused_path_matches_module_path(fused_env, name, prompt_lens):
    base, quant, targets = CASES[name]
    if quant.get("quant_algo") == "FP8" and DEVICE == "cuda":
        # On a GPU the module path's FP8 GEMMs (cuBLASLt) sum in another order than the fused kernels, and a
        # last-bit difference moves some next-layer input across an e4m3 rounding boundary (one e4m3 step is
        # ~6% of that element; an H200 run differed by up to 5e-4 in the logits). The comparison is exact
        # only where both paths share one summation order: on CPU. The FP8 kernels themselves are checked
        # against the FP8 definition on the GPU in tests/kernels/test_triton_weight_only.py.
        pytest.skip("FP8 fused vs module path differ by e4m3 rounding flips on a GPU (checked on CPU)")
    cfg = ModelConfig(vocab_size=61, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=40, max_position_embeddings=32,
                      quantization=QuantConfig(**quant), **CONFIGS[base])
    model = random_model(cfg)
    pool = attach_pool(model, targets)
    assert model.fused is not None                 # adapters no longer switch the fused path off
    fused = model.fused
    shrinks, beside = [], []
    real_shrink = fused.lora_shrink
    fused.lora_shrink = lambda *a, **k: shrinks.append(1) or real_shrink(*a, **k)
    for layer in model.transformer.layers:
        ad = layer.attention.qkv.adapter
        real = ad.fn
        ad.fn = lambda x, *a, _real=real: beside.append(x.shape[0]) or _real(x, *a)
    ref = _steps(model, cfg, pool, prompt_lens, False)
    beside.clear()
    got = _steps(model, cfg, pool, prompt_lens, True)
    fused_beside = [n for n in beside if fused.applies(n)]   # the 12-token prompt step is the module path's
    if quant:
        assert fused_beside and not shrinks, "the adapter did not run beside the format's kernel"
    else:
        assert shrinks and not fused_beside, "the adapter did not run in the fused GEMV"
    assert ref.abs().max() > 0.1
    assert (ref - got).abs().max().item() <= 1e-4
    assert torch.equal(ref.argmax(-1), got.argmax(-1))   # greedy tokens identical
    # the adapters matter at this tolerance: every row without one differs from the same step with them
    plain = _steps(model, cfg, pool, prompt_lens, True, slots=[-1, -1, -1])
    rows = torch.tensor([s for s, n in zip(SLOTS, prompt_lens) for _ in range(n)] + SLOTS)
    assert (plain - got)[rows >= 0].abs().amax(-1).min().item() > 1e-3
    torch.testing.assert_close(plain[rows < 0], got[rows < 0], rtol=0, atol=1e-5)
