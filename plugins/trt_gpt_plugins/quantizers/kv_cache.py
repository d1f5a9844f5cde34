"""INT8 / FP8 KV cache: the quantizer plugin for `quantization.kv_cache_quant_algo` INT8 and FP8.

Offline it adds each layer's K and V cache scales to a rank's state dict,

    transformer.layers.{i}.attention.k_cache_scaling_factor   fp32 [1]
    transformer.layers.{i}.attention.v_cache_scaling_factor   fp32 [1]

from the calibration's per-column abs-max of the qkv output (`kernels/kv_quant_ref.py`: abs-max / 127 or
/ 448, separately for K and V, K's bounded through the rotary embedding). The statistics are the whole
layer's, so every tensor-parallel rank gets the same scales. Random-weight engines (no calibration) get
scale 1 (e4m3 then covers |x| <= 448; for INT8 only benchmarks' speed is meaningful).
"""
from __future__ import annotations

from typing import Any

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.kernels.kv_quant_ref import K_SCALE_NAME, V_SCALE_NAME, kv_absmax_from_qkv, kv_cache_scale

# kv_cache_quant_algo -> the cache's storage dtype
KV_DTYPES = {"INT8": torch.int8, "FP8": torch.float8_e4m3fn}


def rotary_dims(cfg: ModelConfig) -> int:
    """How many dimensions of each head the position encoding rotates (0 without rotary embeddings)."""
    return cfg.rotary_dim if cfg.position_embedding_type.startswith("rope") else 0


def layer_kv_scales(stats: Any, cfg: ModelConfig, local_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K scale [1], V scale [1]) of one of this rank's layers (index local to its pipeline stage)."""
    dtype = KV_DTYPES[cfg.quantization.kv_cache_quant_algo]
    if stats is None:
        return torch.ones(1), torch.ones(1)
    name = f"transformer.layers.{local_layer}.attention.qkv"
    cols = stats.for_rank(name, "column", cfg).out_absmax   # output statistics: the whole layer's
    k, v = kv_absmax_from_qkv(cols.float(), cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_size,
                              rotary_dims(cfg), interleaved=False)
    return kv_cache_scale(k, dtype), kv_cache_scale(v, dtype)


class KVCacheQuantizer:
    """Per-layer K and V scales for an 8-bit paged KV cache; it quantizes no linear layer."""
    name = "kv_cache"
    quant_algos = ()
    kv_cache_quant_algos = tuple(KV_DTYPES)

    def linear_method(self, cfg: ModelConfig, role: str, layer_idx: int | None) -> None:
        return None

    def quantize_kv(self, tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                    stats: Any | None = None) -> dict[str, torch.Tensor]:
        """One rank's state dict with its layers' K and V cache scales added."""
        out = dict(tensors)
        layers = sorted({int(n.split(".")[2]) for n in tensors if n.startswith("transformer.layers.")})
        for i in layers:
            k, v = layer_kv_scales(stats, cfg, i)
            out[f"transformer.layers.{i}.{K_SCALE_NAME}"] = k
            out[f"transformer.layers.{i}.{V_SCALE_NAME}"] = v
        return out
