"""Every linear layer of the model comes from one factory, `make_linear`.

A layer owns its tensor-parallel style (column: output features split, no communication; row: input
features split, partial products all-reduced, bias added once) and delegates how its weight is stored and
multiplied to a `LinearMethod`. The plain method holds a `[out, in]` float matrix; a quantizer plugin gives
another method (integer weights with scales, FP8, ...) for the roles it quantizes. Because the meta-model,
strict loading, convert/build shape checks and the fused decode path all read these same modules, a new
weight format is one plugin, not a change in five places.

Adapters (LoRA) attach to a layer as `layer.adapter`, a callable adding its delta to the layer's output,
rather than wrapping the module: parameter names stay the canonical checkpoint names, and adapter weights
live in the runtime's slot pool, not in the state dict.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .parallel import TPGroup

# role -> tensor-parallel style; the roles are the canonical module names of the checkpoint format
PARALLEL = {"qkv": "column", "fc": "column", "gate": "column", "lm_head": "column", "dense": "row", "proj": "row"}

Adapter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LinearMethod:
    """How a linear layer holds and applies its weight; this base class is the unquantized float matrix.

    A quantizer plugin subclasses it: `create_weights` registers the layer's parameters (under the names the
    checkpoint uses: `weight`, `per_channel_scale`, ...) through `Linear.add_param`, and `apply` computes
    `x @ W^T (+ bias)` from them.
    """
    name = "none"
    # What `small_batch` fuses into its one kernel (FusedLayers does the rest with separate kernels):
    # "norm" (prologue), "activation", "residual", "gate" (act(x W^T) * (x G^T)), "kv_write" (the K/V columns
    # into the paged cache), "argmax" (greedy picks), "lora" (each row's adapter delta before the bias, from
    # the shrink's partials: `kernels.lora_epilogue`; a format without it has FusedLayers add the adapter
    # beside its kernel). None: the format has no small-batch kernel and a model holding such a layer takes
    # the module path at every batch size.
    small_batch_fusions: frozenset[str] | None = frozenset(
        {"norm", "activation", "residual", "gate", "kv_write", "argmax", "lora"})
    # Set where the layer's input is not the model's activation but that divided by a scale folded into the
    # norm before it (SmoothQuant's folded smoothing, whose scale the checkpoint does not keep): a one-line
    # reason naming the format. An adapter reading such an input would add the wrong delta, so LoRA
    # refuses the layer (`LoraAdapter.validate`).
    rescaled_input: str | None = None

    def create_weights(self, layer: "Linear", in_features: int, out_features: int) -> None:
        layer.add_param("weight", (out_features, in_features))

    def apply(self, layer: "Linear", x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)

    def check_fusions(self, where: str, **given: Any) -> None:
        """ValueError naming the fusions among `given` (name -> argument) that this format's `small_batch`
        does not compute: a kernel silently skipping one would return a wrong result."""
        extra = sorted(k for k, v in given.items() if v is not None and k not in (self.small_batch_fusions or ()))
        if extra:
            raise ValueError(f"{where}: the {self.name} small-batch kernel does not fuse {', '.join(extra)} "
                             f"(it fuses {', '.join(sorted(self.small_batch_fusions or ())) or 'nothing'})")

    def small_batch(self, layer: "Linear", x: torch.Tensor, *, norm: Any = None, activation: str | None = None,
                    residual: torch.Tensor | None = None, residual_scale: float = 1.0, gate: "Linear | None" = None,
                    kv_write: Any = None, argmax: Any = None, out_dtype: torch.dtype | None = None,
                    lora: Any = None) -> torch.Tensor:
        """`layer(x)` with bias for a step of a few rows as one kernel (`FusedLayers`' path), with the
        fusions of `small_batch_fusions` (arguments as `kernels.triton_gemv.fused_linear`'s): the decode GEMV
        that reads `layer.weight` as stored."""
        from ..kernels.triton_gemv import fused_linear

        return fused_linear(x, layer.weight, layer.bias, norm=norm, activation=activation,
                            gate_weight=gate.weight if gate is not None else None,
                            gate_bias=gate.bias if gate is not None else None, residual=residual,
                            residual_scale=residual_scale, kv_write=kv_write, argmax=argmax, out_dtype=out_dtype,
                            lora=lora)


class Linear(nn.Module):
    """A column- or row-parallel linear layer with a pluggable weight format and an optional adapter."""

    def __init__(self, role: str, in_features: int, out_features: int, bias: bool, tp: TPGroup,
                 method: LinearMethod | None = None):
        super().__init__()
        self.role, self.parallel, self.tp = role, PARALLEL[role], tp
        self.in_features, self.out_features = in_features, out_features   # this rank's (local) sizes
        self.method = method or LinearMethod()
        # name -> fixed dtype, or None for the model's dtype (what checkpoint checks compare against)
        self.param_dtypes: dict[str, torch.dtype | None] = {}
        self.method.create_weights(self, in_features, out_features)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        if bias:
            self.param_dtypes["bias"] = None
        self.adapter: Adapter | None = None

    def add_param(self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> None:
        """Register a parameter; `dtype` None means the model's dtype, anything else is fixed (int8 weights)."""
        self.param_dtypes[name] = dtype
        t = torch.empty(shape, dtype=dtype) if dtype is not None else torch.empty(shape)
        self.register_parameter(name, nn.Parameter(t, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel == "row" and self.tp.size > 1:
            y = self.method.apply(self, x, None)
            if self.adapter is not None:
                # before the all-reduce: sum_r (x_r A_r^T) B^T = (x A^T) B^T, so each rank's partial delta
                # from its input slice of A adds up to the full adapter delta
                y = self.adapter(x, y)
            y = self.tp.all_reduce(y)
            return y + self.bias if self.bias is not None else y
        # at tp 1 the bias goes into the GEMM's epilogue: a separate broadcast add was a kernel of its own
        # (H200, GPT-2 medium 128-token prefill: 48 x 2.8 us of a 1.34 ms graph)
        y = self.method.apply(self, x, self.bias)
        return self.adapter(x, y) if self.adapter is not None else y

    def extra_repr(self) -> str:
        return (f"role={self.role}, in={self.in_features}, out={self.out_features}, parallel={self.parallel}, "
                f"method={self.method.name}")


def make_linear(cfg: ModelConfig, role: str, in_features: int, out_features: int, bias: bool,
                tp: TPGroup, layer_idx: int | None = None) -> Linear:
    """The linear layer for `role` (qkv, dense, fc, gate, proj, lm_head) with this rank's local sizes, in the
    weight format the configured quantizer gives that role (unquantized where none applies)."""
    from ..quant.registry import linear_method

    return Linear(role, in_features, out_features, bias, tp, linear_method(cfg, role, layer_idx))


def linears(model: nn.Module) -> list[tuple[str, Linear]]:
    """Every factory-made linear layer of `model` with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Linear)]


def param_dtypes(model: nn.Module) -> dict[str, Any]:
    """Qualified parameter name -> fixed dtype (None: the model dtype) for every parameter of `model`."""
    out: dict[str, Any] = {}
    for mod_name, mod in model.named_modules():
        fixed = getattr(mod, "param_dtypes", None) or {}   # Linear's, and Attention's 8-bit KV scales
        for pname, _ in mod.named_parameters(recurse=False):
            out[f"{mod_name}.{pname}" if mod_name else pname] = fixed.get(pname)
    return out
