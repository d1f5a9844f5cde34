"""Per-request `max_attention_window_size`: each token attends to the last W tokens (itself included),
checked against a float64 GPT-2 written out here with that mask; windowed and full-context requests
share batches without changing each other's results."""
from __future__ import annotations

import math

import pytest

import torch
import torch.nn.functional as F

from trt_gpt import SamplingParams
from trt_gpt.testing import random_prompts

VOCAB = 211


def _gpt2_f64_logits(hf, ids: list[int], window: int | None) -> torch.Tensor:
    """Last-position logits of HF GPT-2 weights in float64, with a sliding-window causal mask."""
    c = hf.config
    sd = {k: v.double() for k, v in hf.state_dict().items()}
    t, h, d = len(ids), c.n_head, c.n_embd // c.n_head
    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:t]
    pos = torch.arange(t)
    allowed = pos[None, :] <= pos[:, None]
    if window is not None:
        allowed &= (pos[:, None] - pos[None, :]) < window

    def ln(v, name):
        return F.layer_norm(v, (c.n_embd,), sd[name + ".weight"], sd[name + ".bias"], c.layer_norm_epsilon)

    def gelu_new(v):
        return 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))

    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        qkv = ln(x, p + "ln_1") @ sd[p + "attn.c_attn.weight"] + sd[p + "attn.c_attn.bias"]  # Conv1D: [in, out]
        q, k, v = (z.view(t, h, d).transpose(0, 1) for z in qkv.split(c.n_embd, dim=-1))
        att = (q @ k.transpose(1, 2) / math.sqrt(d)).masked_fill(~allowed, float("-inf")).softmax(-1)
        a = (att @ v).transpose(0, 1).reshape(t, c.n_embd)
        x = x + a @ sd[p + "attn.c_proj.weight"] + sd[p + "attn.c_proj.bias"]
        m = gelu_new(ln(x, p + "ln_2") @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"])
        x = x + m @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]
    return ln(x, "transformer.ln_f")[-1] @ sd["transformer.wte.weight"].T


def _greedy_f64(hf, prompt: list[int], n: int, window: int | None) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            out.append(int(_gpt2_f64_logits(hf, prompt + out, window).argmax()))
    return out


def test_window_matches_float64_reference_and_mixes_with_full_context(tiny_gpt2_engine):
    tiny = tiny_gpt2_engine
    prompts = random_prompts(VOCAB, [20, 9], seed=31)
    n, w = 12, 6
    full_ref = [_greedy_f64(tiny.hf, p, n, None) for p in prompts]
    win_ref = [_greedy_f64(tiny.hf, p, n, w) for p in prompts]
    assert full_ref != win_ref
    assert full_ref == [tiny.hf_generate(p, max_new_tokens=n) for p in prompts]   # the reference is GPT-2
    llm = tiny.llm(max_num_tokens=8)          # prompt chunks cross the window edge too
    full = SamplingParams(max_tokens=n)
    win = SamplingParams(max_tokens=n, max_attention_window_size=w)
    outs = llm.generate(prompts + prompts, [win, win, full, full])
    assert [o.token_ids for o in outs] == win_ref + full_ref
    # A window longer than any sequence is the same as none.
    o = llm.generate(prompts[:1], SamplingParams(max_tokens=n, max_attention_window_size=10_000))[0]
    assert o.token_ids == full_ref[0]
    # Each windowed request alone equals its result in the mixed batch above.
    assert [llm.generate([p], win)[0].token_ids for p in prompts] == win_ref


def test_request_window_overrides_the_models_both_ways(tmp_path):
    """A model with a sliding window (StarCoder2, 8): `max_attention_window_size` replaces it for the request,
    larger (20) as well as smaller (4), as the reference's does; the oracle is HF with that sliding window."""
    pytest.importorskip("trt_gpt_starcoder2")
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    from trt_gpt.runtime.llm import LLM
    from trt_gpt.testing import engine_from_checkpoint, hf_greedy, save_tiny

    cfg = Starcoder2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           initializer_range=0.2, bos_token_id=0, eos_token_id=0, sliding_window=8)
    cfg._attn_implementation = "eager"
    hf = save_tiny(Starcoder2ForCausalLM, cfg, tmp_path / "hf")
    llm = LLM(engine_from_checkpoint(tmp_path / "hf", tmp_path), device="cpu")
    prompt, n = random_prompts(VOCAB, [24], seed=5)[0], 10
    got = {w: llm.generate([prompt], SamplingParams(max_tokens=n, min_tokens=n, max_attention_window_size=w)
                           )[0].token_ids for w in (None, 4, 20)}
    ref = {}
    for w in (None, 4, 20):
        hf.config.sliding_window = 8 if w is None else w
        ref[w] = hf_greedy(hf, prompt, n)
    assert len({tuple(r) for r in ref.values()}) == 3    # the three windows give three different outputs
    assert got == ref
