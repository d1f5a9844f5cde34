"""Small-batch fast path of the GPT forward: a decoder layer as four fused GEMV kernels plus attention.

At batch 1 a decode step is ~12 kernels a layer, most of them tiny (norms, bias adds, the activation,
residual adds, RoPE's gathers and concatenations) and each costing a few microseconds even inside a CUDA
graph, while cuBLAS' GEMVs read the weights at ~55-60% of the memory bandwidth. Here a layer is

    qkv   = [input_layernorm ->] x @ Wqkv^T + b [k, v -> cache] one kernel (norm recomputed per program;
                                                               without RoPE its epilogue writes the cache)
    q     = RoPE(q), RoPE(k) -> cache, v -> cache              one kernel, RoPE models only
    attn  = paged decode attention                             the backend's kernels (split-K + merge)
    x     = x + m * (attn @ Wo^T + bo)                         one kernel
    h     = act([post_layernorm ->] x @ Wfc^T + bfc) [* gate]  one kernel
    x     = x + m * (h @ Wproj^T + bproj)                      one kernel

and the final norm + lm_head is one more, which can also leave the greedy picks (its epilogue reduces each
tile, one small kernel the tiles) instead of a reduction kernel over the logits. Any step of at most
`max_rows` tokens takes these layers (decode steps, and prompt steps that small); the head also serves the
last-token rows of larger prompt steps that ran the module path's layers. The path is taken only where it
computes the same function as the module path: the Triton backend, one tensor-parallel rank (a
row-parallel bias is added after the all-reduce, which a fused epilogue cannot do), and a norm and
activation that the kernel implements (a norm or activation a plugin overrides keeps the module path).
TRT_GPT_FUSED_DECODE_ROWS=0 switches it off; a number sets `max_rows`.

Each linear layer runs its weight format's own small-batch kernel (`LinearMethod.small_batch`): the float
GEMV above, the weight-only GEMV (INT8 / INT4 dequantized in registers) and the FP8 GEMV (after one
norm-and-quantize kernel) with the same norm / activation / residual fusions. What a format's kernel does
not fuse runs beside it as the module path runs it: the K/V cache write (also for 8-bit caches, through
the one K/V write) and the gate of a gated MLP. A format without a small-batch kernel (SmoothQuant) takes
the module path.

LoRA adapters (runtime/lora_pool.py) are read from each layer at call time. The float GEMV adds each row's
delta in its epilogue, before the bias and activation (`kernels.lora_epilogue`), after one small shrink
kernel over the step's rows (`kernels.triton_lora_rows`, with the same norm prologue), so the K/V write and
the residual stay fused; a gate with its own adapter runs as its own GEMV. Formats whose kernel has no
LoRA epilogue (weight-only, FP8) run the layer as the module path does around their kernel: norm module,
the kernel, the adapter, then activation and residual in torch.

A tensor-core sibling of the GEMV for whole prompt steps was measured slower than cuBLAS plus the separate
kernels and removed (docs/benchmarks.md).
"""
from __future__ import annotations

from typing import Any

import torch

from ..config import ModelConfig
from ..env import env_setting, non_negative_int
from ..errors import TrtGptError

ENV_VAR = "TRT_GPT_FUSED_DECODE_ROWS"
# Steps with at most this many tokens take the path. Measured on an H100 (benchmarks/gemv.py): the fused
# GEMV beats cuBLAS + the separate small kernels at M = 1 only; from M = 2 cuBLAS' GEMMs read the weights
# faster than the fused kernel's per-row accumulators allow (docs/benchmarks.md).
DEFAULT_MAX_ROWS = 1

# hidden_act name -> the kernel's activation, for the built-in activation functions only
KERNEL_ACTIVATIONS = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu", "squared-relu": "squared_relu", "relu2": "squared_relu", "silu": "silu",
    "swiglu": "silu", "fast-swiglu": "silu", "geglu": "gelu_tanh",
}


def _kernel_activation(cfg: ModelConfig) -> str | None:
    """The kernel activation for the model's hidden_act, or None when the registered function is not the
    built-in one of that name (a plugin replaced it) or the kernel lacks it."""
    from trt_gpt_plugins.activations import ACTIVATIONS

    from .layers import get_activation

    name = cfg.hidden_act
    if name not in KERNEL_ACTIVATIONS or get_activation(name) is not ACTIVATIONS.get(name):
        return None
    return KERNEL_ACTIVATIONS[name]


def max_rows_setting() -> int:
    return env_setting(ENV_VAR, non_negative_int, DEFAULT_MAX_ROWS)


def _builtin_norms(model: Any) -> bool:
    """Whether every norm of the model is the built-in `Norm` (the kernels implement its kinds only)."""
    from .layers import Norm

    t = model.transformer
    norms = [n for layer in t.layers for n in (layer.input_layernorm, layer.post_layernorm)]
    return all(type(n) is Norm for n in norms + ([t.ln_f] if hasattr(t, "ln_f") else []))


class FusedLayers:
    """Runs decoder layers and the head with the fused kernels; built by `create` once weights are loaded."""

    # the head's epilogue computes the greedy picks (benchmarks/tune_decode.py --argmax-ab turns it off)
    fuse_argmax = True

    def __init__(self, model: Any, activation: str, max_rows: int):
        from ..kernels.kv_store import KVWrite
        from ..kernels.triton_argmax import ArgmaxOut
        from ..kernels.triton_embed import embed
        from ..kernels.triton_gemv import MAX_M, NormArgs
        from ..kernels.triton_lora_rows import LoraEpilogue, lora_shrink_rows
        from .layers import get_activation

        self.kv_write, self.embed_kernel, self.argmax_out = KVWrite, embed, ArgmaxOut
        self.lora_epilogue, self.lora_shrink = LoraEpilogue, lora_shrink_rows
        self.max_rows = min(max_rows, MAX_M)
        self.activation = activation
        cfg = model.cfg
        self.act_fn = get_activation(cfg.hidden_act)   # the module path's (built-in) function, see create
        self.multiplier = cfg.residual_multiplier
        t = model.transformer
        self.norms = [(self._norm_args(layer.input_layernorm, NormArgs),
                       self._norm_args(layer.post_layernorm, NormArgs)) for layer in t.layers]
        self.final_norm = self._norm_args(t.ln_f, NormArgs) if hasattr(t, "ln_f") else None
        if hasattr(model, "lm_head"):
            # the head's greedy picks come from its kernel only where its weight format fuses them
            self.fuse_argmax = self.fuse_argmax and "argmax" in model.lm_head.method.small_batch_fusions

    @staticmethod
    def _norm_args(norm: Any, norm_args: Any) -> Any:
        w = norm.weight
        if norm.kind == "layernorm1p":
            w = (w.float() + 1).to(w.dtype)   # stored as gamma - 1
        kind = "rmsnorm" if norm.kind == "rmsnorm" else "layernorm"
        return norm_args(kind=kind, weight=w, bias=norm.bias, eps=norm.eps)

    @classmethod
    def create(cls, model: Any, backend: Any) -> "FusedLayers | None":
        """The fast path for `model` on `backend`, or None where it would not compute the same function."""
        max_rows = max_rows_setting()
        cfg = model.cfg
        if max_rows <= 0 or getattr(backend, "name", "") != "triton" or cfg.mapping.tp_size != 1:
            return None
        activation = _kernel_activation(cfg)
        if activation is None or not _builtin_norms(model):
            return None
        from .linear import linears

        if any(lin.method.small_batch_fusions is None for _, lin in linears(model)):
            return None   # a weight format without a small-batch kernel (its layers take the module path)
        from ..errors import TrtGptError
        from ..kernels.gemv_configs import load_env_configs
        try:
            load_env_configs()   # a GPU-specific tile table (TRT_GPT_GEMV_CONFIGS), checked at engine load
        except ValueError as e:
            raise TrtGptError(str(e)) from None
        return cls(model, activation, max_rows)

    def applies(self, rows: int) -> bool:
        """Whether a step (or a head) of `rows` tokens takes this path."""
        return 0 < rows <= self.max_rows

    def layer(self, idx: int, layer: Any, x: torch.Tensor, positions: torch.Tensor, meta: Any, kv: tuple,
              rope: Any, backend: Any, window: int | None) -> torch.Tensor:
        """One decoder layer (`DecoderLayer.forward`'s function) for a step that `applies`. Each linear layer's
        weight format runs its own small-batch kernel (`LinearMethod.small_batch`); what that kernel does not
        fuse (the cache write, the gate, an adapter) runs here as the module path runs it."""
        norm_in, norm_post = self.norms[idx]
        attn, mlp = layer.attention, layer.mlp
        qkv_l = attn.qkv
        if rope is None and attn.kv_scales is None and self._fuses(qkv_l, "kv_write"):
            # the qkv kernel's epilogue stores k and v (with any adapter's delta) in the (float) cache: no
            # separate cache-write kernel
            q_cols = attn.heads * attn.head_size
            kvw = self.kv_write(kv[0], kv[1], meta.slot_mapping, q_cols, attn.kv_heads, attn.head_size)
            qkv = self._linear(qkv_l, x, (norm_in, layer.input_layernorm), kv_write=kvw)
            q = qkv[:, :q_cols].view(-1, attn.heads, attn.head_size)
        else:
            # RoPE, an 8-bit cache or a format without the epilogue: the one K/V write of the module path
            qkv = self._linear(qkv_l, x, (norm_in, layer.input_layernorm))
            q = attn.cache_qkv(qkv, positions, meta, kv, rope, backend)
        out = backend.attention(q, kv[0], kv[1], meta, attn.scale, window, kv_scales=attn.kv_scales)
        x = self._linear(attn.dense, out.reshape(x.shape[0], -1), residual=x)
        fc, post = mlp.fc, (norm_post, layer.post_layernorm)
        # the fused gate's product gets no adapter delta: a gate with its own adapter runs apart
        fused_gate = mlp.gated and self._fuses(fc, "gate") and mlp.gate.adapter is None
        h = self._linear(fc, x, post, activation=True, gate=mlp.gate if fused_gate else None)
        if mlp.gated and not fused_gate:
            h = h * self._linear(mlp.gate, x, post)
        return self._linear(mlp.proj, h, residual=x)

    @staticmethod
    def _adapter_in_kernel(lin: Any) -> bool:
        """Whether `lin`'s small-batch kernel computes its whole output: no adapter, or a slot-pool adapter
        (A, B and the per-token slot column: `runtime.lora_pool`) in a format that fuses "lora"."""
        adapter = lin.adapter
        return adapter is None or ("lora" in lin.method.small_batch_fusions
                                   and getattr(adapter, "slots", None) is not None)

    @classmethod
    def _fuses(cls, lin: Any, fusion: str) -> bool:
        """Whether `lin`'s kernel computes `fusion` together with its adapter's delta (where it has one)."""
        return fusion in lin.method.small_batch_fusions and cls._adapter_in_kernel(lin)

    def _linear(self, lin: Any, x: torch.Tensor, norm: tuple[Any, Any] | None = None, *, activation: bool = False,
                gate: Any = None, residual: torch.Tensor | None = None, kv_write: Any = None) -> torch.Tensor:
        """`lin` on a step: [norm ->] lin [+ adapter] [-> act] [* gate] [-> residual + m * y]. `norm` is the
        (kernel NormArgs, norm module) pair. The adapter (read at call time: adapters attach after `create`)
        runs inside the kernel where the weight format fuses "lora" (the row shrink, then the GEMV's epilogue),
        else beside the format's kernel as the module path runs it: norm module, the kernel without fusions,
        `lin.adapter`, then the activation and the residual add in torch (`gate` and `kv_write` are only
        passed where `_fuses` allows them)."""
        norm_args = norm[0] if norm is not None else None
        act = self.activation if activation else None
        m = self.multiplier
        adapter = lin.adapter
        if self._adapter_in_kernel(lin):
            lora = None
            if adapter is not None:
                v = self.lora_shrink(x, adapter.a, adapter.slots, norm=norm_args)
                lora = self.lora_epilogue(v, adapter.b, adapter.slots)
            return lin.method.small_batch(lin, x, norm=norm_args, activation=act, gate=gate, residual=residual,
                                          residual_scale=m, kv_write=kv_write, lora=lora)
        if gate is not None or kv_write is not None:
            raise ValueError(f"{lin.role}: the gate / K/V write cannot be fused where the adapter runs beside "
                             "the kernel")
        h = norm[1](x) if norm is not None else x
        y = adapter(h, lin.method.small_batch(lin, h))
        if activation:
            y = self.act_fn(y)
        if residual is not None:
            y = residual + y * m if m != 1.0 else residual + y
        return y

    def head(self, lm_head: Any, hidden: torch.Tensor, vocab: int, picks: torch.Tensor | None = None,
             host_picks: Any | None = None) -> torch.Tensor:
        """ln_f + lm_head in one kernel, fp32 logits over the padded vocab; with `picks` (int32 [rows]) also
        each row's argmax over the first `vocab` logits (the epilogue's partials + one small kernel), which
        also stores them in host memory where `host_picks` says."""
        am = self.argmax_out(picks, vocab, host_picks) if picks is not None else None
        return lm_head.method.small_batch(lm_head, hidden, norm=self.final_norm, out_dtype=torch.float32,
                                          argmax=am)
