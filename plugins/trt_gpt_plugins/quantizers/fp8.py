"""FP8 (e4m3) linear layers, the quantizer plugin for quant_algo FP8 (TensorRT-LLM's checkpoint layout):

    <layer>.weight                     float8_e4m3fn [out, in]
    <layer>.weights_scaling_factor     fp32 [1]   max|W| / 448
    <layer>.activation_scaling_factor  fp32 [1]   static, from calibration: max|x| / 448 over the calibration text

qkv, dense, fc, gate and proj are quantized; lm_head and the embeddings stay in the model's dtype. The
arithmetic is `kernels/fp8_ref.py`'s (torch._scaled_mm on GPUs of capability >= 8.9, an emulation of the
same FP8 values on CPU). Random-weight engines have no calibration: their activation scales are 1 (e4m3
then covers |x| <= 448, far beyond the activations of N(0, 0.02) weights), which only benchmarks use.
"""
from __future__ import annotations

from typing import Any

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.kernels.fp8_ref import FP8_DTYPE, fp8_linear, fp8_scale, quantize_weight_fp8
from trt_gpt.model.linear import Linear, LinearMethod, linears

QUANTIZED_ROLES = ("qkv", "dense", "fc", "gate", "proj")


class FP8Method(LinearMethod):
    """e4m3 weight with per-tensor weight and static activation scales."""
    name = "fp8"
    # at batch 1: the activation quantization (with the norm before it) in one kernel, then the e4m3 GEMV with
    # the bias / activation / residual epilogue (kernels/triton_weight_only.fp8_gemv)
    small_batch_fusions = frozenset({"norm", "activation", "residual"})

    def create_weights(self, layer: Linear, in_features: int, out_features: int) -> None:
        layer.add_param("weight", (out_features, in_features), FP8_DTYPE)
        layer.add_param("weights_scaling_factor", (1,), torch.float32)
        layer.add_param("activation_scaling_factor", (1,), torch.float32)

    def apply(self, layer: Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return fp8_linear(x, layer.weight, layer.weights_scaling_factor, bias, layer.activation_scaling_factor,
                          out_dtype=x.dtype)


    def small_batch(self, layer: Linear, x: torch.Tensor, *, norm: Any = None, activation: str | None = None,
                    residual: torch.Tensor | None = None, residual_scale: float = 1.0, gate: Linear | None = None,
                    kv_write: Any = None, argmax: Any = None, out_dtype: torch.dtype | None = None,
                    lora: Any = None) -> torch.Tensor:
        from trt_gpt.kernels.triton_quant import quantize_rows_fp8
        from trt_gpt.kernels.triton_weight_only import fp8_gemv

        self.check_fusions("fp8 linear layer", gate=gate, kv_write=kv_write, argmax=argmax, lora=lora)
        x_q = quantize_rows_fp8(x.contiguous(), layer.activation_scaling_factor, norm=norm)
        return fp8_gemv(x_q, layer.weight, layer.weights_scaling_factor, layer.activation_scaling_factor, layer.bias,
                        out_dtype=out_dtype or x.dtype, activation=activation, residual=residual,
                        residual_scale=residual_scale)


class FP8Quantizer:
    name = "fp8"
    quant_algos = ("FP8",)
    kv_cache_quant_algos = ()

    def linear_method(self, cfg: ModelConfig, role: str, layer_idx: int | None) -> LinearMethod | None:
        return FP8Method() if role in QUANTIZED_ROLES else None

    def quantize(self, tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                 stats: Any | None = None) -> dict[str, torch.Tensor]:
        from trt_gpt.model import GPTForCausalLM

        with torch.device("meta"):
            model = GPTForCausalLM(cfg)
        out = dict(tensors)
        for name, lin in linears(model):
            if not isinstance(lin.method, FP8Method) or f"{name}.weight" not in out:
                continue   # check_rank_tensors names a missing tensor
            w_q, s_w = quantize_weight_fp8(out.pop(f"{name}.weight"))
            out[f"{name}.weight"] = w_q
            out[f"{name}.weights_scaling_factor"] = s_w
            act = torch.ones(1, device=w_q.device) if stats is None else \
                fp8_scale(stats.for_rank(name, lin.parallel, cfg).in_absmax.float().amax())
            out[f"{name}.activation_scaling_factor"] = act
        return out
