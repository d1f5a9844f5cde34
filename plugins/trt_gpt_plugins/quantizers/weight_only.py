"""Weight-only quantization (INT8 / INT4 per-channel, INT4 group-wise, AWQ): the quantizer plugin and the
`LinearMethod` its layers use. The storage layout is defined in `weight_only_format`.

Quantization runs per tensor-parallel rank after sharding, so every scale is this rank's: a row-parallel
layer's groups lie inside its local input slice. The linear roles qkv, dense, fc, gate and proj are
quantized; lm_head and the embeddings stay in float.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trt_gpt.checkpoint import torch_dtype
from trt_gpt.config import ModelConfig, QuantConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.model.linear import Linear, LinearMethod, linears
from trt_gpt.quant.registry import ROLE_PATHS

from .weight_only_format import check_group, pack_int4, quantize_rtn, weight_only_linear

QUANTIZED_ROLES = ("qkv", "dense", "fc", "gate", "proj")


@dataclass(frozen=True)
class WeightOnlySpec:
    """What a `quant_algo` means here: bits, group size (None: per channel), AWQ pre-quant scale or not."""
    bits: int
    group_size: int | None
    awq: bool

    @classmethod
    def of(cls, qcfg: QuantConfig) -> "WeightOnlySpec":
        if qcfg.has_zero_point:
            raise TrtGptError(f"quantization.has_zero_point is true but {qcfg.quant_algo} is implemented only "
                              "symmetric (no zero points)")
        algo = qcfg.quant_algo
        if algo == "W8A16":
            return cls(8, None, False)
        if algo == "W4A16":
            return cls(4, None, False)
        return cls(4, qcfg.group_size, algo == "W4A16_AWQ")

    @property
    def scale_name(self) -> str:
        return "per_channel_scale" if self.group_size is None else "weights_scaling_factor"


class WeightOnlyMethod(LinearMethod):
    """Integer weights with per-channel or per-group scales (and AWQ's input scale), multiplied through
    `weight_only_linear`; at batch 1 the same GEMV with the norm prologue and the activation / residual
    epilogue fused (`small_batch`), as the float format's decode kernel does."""
    small_batch_fusions = frozenset({"norm", "activation", "residual"})

    def __init__(self, spec: WeightOnlySpec, where: str):
        self.spec, self.where = spec, where
        g = f"_g{spec.group_size}" if spec.group_size else ""
        self.name = f"int{spec.bits}{g}{'_awq' if spec.awq else ''}"

    def create_weights(self, layer: Linear, in_features: int, out_features: int) -> None:
        s = self.spec
        if s.bits == 4 and in_features % 2:
            raise TrtGptError(f"{self.where}: INT4 needs an even input dimension, got {in_features}")
        check_group(in_features, s.group_size, self.where)
        layer.add_param("weight", (out_features, in_features // 2 if s.bits == 4 else in_features), torch.int8)
        if s.group_size is None:
            layer.add_param("per_channel_scale", (out_features,))
        else:
            layer.add_param("weights_scaling_factor", (out_features, in_features // s.group_size))
        if s.awq:
            layer.add_param("prequant_scaling_factor", (in_features,))

    def apply(self, layer: Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        scale = getattr(layer, self.spec.scale_name)
        prequant = layer.prequant_scaling_factor if self.spec.awq else None
        return weight_only_linear(x, layer.weight, scale, self.spec.bits, bias, prequant)

    def small_batch(self, layer: Linear, x: torch.Tensor, *, norm: Any = None, activation: str | None = None,
                    residual: torch.Tensor | None = None, residual_scale: float = 1.0, gate: Linear | None = None,
                    kv_write: Any = None, argmax: Any = None, out_dtype: torch.dtype | None = None,
                    lora: Any = None) -> torch.Tensor:
        from trt_gpt.kernels.triton_weight_only import weight_only_linear as kernel

        self.check_fusions(self.where, gate=gate, kv_write=kv_write, argmax=argmax, lora=lora)
        s = self.spec
        return kernel(x, layer.weight, getattr(layer, s.scale_name), layer.bias, bits=s.bits, group_size=s.group_size,
                      prequant=layer.prequant_scaling_factor if s.awq else None, out_dtype=out_dtype, norm=norm,
                      activation=activation, residual=residual, residual_scale=residual_scale)

    def quantize(self, w: torch.Tensor, dtype: torch.dtype, prequant: torch.Tensor | None = None,
                 clip: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One float `[out, in]` weight -> this format's tensors (names relative to the layer); AWQ's
        pre-quant scale and clipping ratios when given."""
        s = self.spec
        wf = w.float() if prequant is None else w.float() / prequant.float()[None, :]
        q, scale = quantize_rtn(wf, s.bits, s.group_size, dtype, clip)
        out = {"weight": pack_int4(q) if s.bits == 4 else q, s.scale_name: scale}
        if prequant is not None:
            out["prequant_scaling_factor"] = prequant.to(dtype)
        return out


class WeightOnlyQuantizer:
    """W8A16, W4A16 (per channel), W4A16_GPTQ (group-wise, round-to-nearest) and W4A16_AWQ."""
    name = "weight_only"
    quant_algos = ("W8A16", "W4A16", "W4A16_GPTQ", "W4A16_AWQ")
    kv_cache_quant_algos: tuple[str, ...] = ()

    def linear_method(self, cfg: ModelConfig, role: str, layer_idx: int | None) -> LinearMethod | None:
        if role not in QUANTIZED_ROLES:
            return None
        where = f"transformer.layers.{layer_idx}.{ROLE_PATHS[role]}"
        return WeightOnlyMethod(WeightOnlySpec.of(cfg.quantization), where)

    def quantize(self, tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                 stats: Any | None = None) -> dict[str, torch.Tensor]:
        from trt_gpt.model import GPTForCausalLM

        spec = WeightOnlySpec.of(cfg.quantization)
        if spec.awq and stats is None:
            raise TrtGptError("quantization.quant_algo W4A16_AWQ needs calibration statistics from a real "
                              "checkpoint (convert --awq --calib_dataset FILE); random weights cannot be AWQ-scaled")
        dtype = torch_dtype(cfg.dtype)
        # the layers and their methods exactly as the runtime will build them (exclusions, roles, sizes)
        with torch.device("meta"):
            model = GPTForCausalLM(cfg)
        out = dict(tensors)
        for name, lin in linears(model):
            if not isinstance(lin.method, WeightOnlyMethod):
                continue
            w = out.pop(f"{name}.weight", None)
            if w is None:
                continue   # check_rank_tensors names the missing tensor
            prequant = clip = None
            if spec.awq:
                from .awq import awq_params

                prequant, clip = awq_params(w, stats.for_rank(name, lin.parallel, cfg), spec.group_size, dtype,
                                            clip=lin.role != "qkv")
            for k, t in lin.method.quantize(w, dtype, prequant, clip).items():
                out[f"{name}.{k}"] = t
        return out
