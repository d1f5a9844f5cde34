"""The oracle of the weight-only tests (one rank and tensor-parallel): tiny HF models of the three attention
kinds, where each canonical linear weight lives in them, and the checkpoint's integers and scales decoded
from the storage format's definition (independently of the code under test)."""
from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import (GPT2Config, GPT2LMHeadModel, GPTBigCodeConfig, GPTBigCodeForCausalLM, Starcoder2Config,
                          Starcoder2ForCausalLM)

from trt_gpt.testing import save_tiny

ATOL = 1e-4
ROLES = {"qkv": "attention.qkv", "dense": "attention.dense", "fc": "mlp.fc", "proj": "mlp.proj"}


def hf_gpt2(path):
    return save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=128,
                                                 initializer_range=0.2, bos_token_id=0, eos_token_id=0), path)


def hf_bigcode(path):
    return save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(
        n_layer=2, n_embd=64, n_head=4, vocab_size=223, n_positions=128, multi_query=True, initializer_range=0.2,
        bos_token_id=None, eos_token_id=None), path)


def hf_starcoder2(path):
    cfg = Starcoder2Config(vocab_size=199, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           initializer_range=0.2, rope_theta=5000.0)
    return save_tiny(Starcoder2ForCausalLM, cfg, path)


def hf_linear_weights(hf, kind: str, i: int) -> dict[str, list[torch.Tensor]]:
    """role -> the HF parameter(s) holding that canonical [out, in] weight, in canonical row order."""
    if kind == "starcoder2":
        lay = hf.model.layers[i]
        a = lay.self_attn
        return {"qkv": [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], "dense": [a.o_proj.weight],
                "fc": [lay.mlp.c_fc.weight], "proj": [lay.mlp.c_proj.weight]}
    h = hf.transformer.h[i]
    return {"qkv": [h.attn.c_attn.weight], "dense": [h.attn.c_proj.weight], "fc": [h.mlp.c_fc.weight],
            "proj": [h.mlp.c_proj.weight]}


def canonical(hf, kind: str, i: int, role: str) -> torch.Tensor:
    ws = [w.detach() for w in hf_linear_weights(hf, kind, i)[role]]
    return ws[0].T.contiguous() if kind == "gpt2" else torch.cat(ws)    # GPT-2's Conv1D stores [in, out]


def set_canonical(hf, kind: str, i: int, role: str, w: torch.Tensor) -> None:
    params = hf_linear_weights(hf, kind, i)[role]
    if kind == "gpt2":
        params[0].data.copy_(w.T)
        return
    start = 0
    for p in params:
        p.data.copy_(w[start:start + p.shape[0]])
        start += p.shape[0]


def unpack_int4_oracle(packed: torch.Tensor) -> torch.Tensor:
    """Low nibble = column 2j, high nibble = column 2j+1, each a 4-bit two's complement value."""
    b = packed.view(torch.uint8).to(torch.int64)
    lo, hi = b & 0xF, b >> 4
    lo, hi = torch.where(lo > 7, lo - 16, lo), torch.where(hi > 7, hi - 16, hi)
    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.int64)
    out[:, 0::2], out[:, 1::2] = lo, hi
    return out


def integers_and_scale(t: dict, name: str, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers [out, in] int64, per-element scale [out, in] float64) of a quantized layer in the checkpoint."""
    q = unpack_int4_oracle(t[f"{name}.weight"]) if bits == 4 else t[f"{name}.weight"].to(torch.int64)
    if f"{name}.per_channel_scale" in t:
        s = t[f"{name}.per_channel_scale"].double()[:, None].expand_as(q)
    else:
        g = t[f"{name}.weights_scaling_factor"].double()
        s = g.repeat_interleave(q.shape[1] // g.shape[1], dim=1)
    return q, s


def dequantized_reference(hf, kind: str, ckpt, bits: int):
    """HF in float64 with each quantized linear's weight = integers x scales (x pre-quant scale per column)."""
    ref = type(hf)(hf.config).double().eval()
    ref.load_state_dict({k: v.double() for k, v in hf.state_dict().items()})
    t = load_file(str(ckpt / "rank0.safetensors"))
    for i in range(hf.config.num_hidden_layers):
        for role, path in ROLES.items():
            name = f"transformer.layers.{i}.{path}"
            q, s = integers_and_scale(t, name, bits)
            w = q.double() * s
            if f"{name}.prequant_scaling_factor" in t:
                # (x * p) W'^T = x (W' diag(p))^T
                w = w * t[f"{name}.prequant_scaling_factor"].double()[None, :]
            set_canonical(ref, kind, i, role, w)
    return ref


MODELS = {"gpt2": (hf_gpt2, 211), "bigcode": (hf_bigcode, 223), "starcoder2": (hf_starcoder2, 199)}
