"""Quantizers come from plugins (`register_quantizers`); this module finds the one that implements a config.

A quantizer works in two phases. Offline (convert, `trt-gpt quantize`, random-weight engines) it transforms a
rank's whole state dict after sharding, since methods such as AWQ and SmoothQuant need a layer's neighbours
and calibration statistics. At load time it gives each linear layer its `LinearMethod` (the runtime module
swap), which defines the parameters the meta-model, strict loading and the build checks expect.

A `quantization.quant_algo` or `kv_cache_quant_algo` that no loaded plugin claims is an error naming the
algorithm, never a silent full-precision run.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Protocol, runtime_checkable

import torch

from ..config import ModelConfig, QuantConfig
from ..errors import TrtGptError

# role -> module path inside a decoder layer (lm_head sits at the top)
ROLE_PATHS = {"qkv": "attention.qkv", "dense": "attention.dense", "fc": "mlp.fc", "gate": "mlp.gate",
              "proj": "mlp.proj", "lm_head": "lm_head"}


@runtime_checkable
class Quantizer(Protocol):
    """What a quantizer plugin registers.

    name: shown by `trt-gpt plugins list`.
    quant_algos: the `quantization.quant_algo` values it implements (TensorRT-LLM's names: W8A16, W4A16, ...).
    kv_cache_quant_algos: the `quantization.kv_cache_quant_algo` values it implements (INT8, FP8), maybe ().
    """
    name: str
    quant_algos: tuple[str, ...]
    kv_cache_quant_algos: tuple[str, ...]

    def linear_method(self, cfg: ModelConfig, role: str, layer_idx: int | None) -> Any:
        """The `LinearMethod` for a layer of `role`, or None to leave that layer unquantized."""

    def quantize(self, tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                 stats: Any | None = None) -> dict[str, torch.Tensor]:
        """One rank's float state dict (names local to its pipeline stage) -> the quantized state dict.
        (A quantizer with kv_cache_quant_algos also has `quantize_kv(tensors, cfg, stats)`, adding each
        layer's KV-cache scales.)"""


def registered_quantizers() -> list[tuple[Any, str]]:
    """(quantizer, plugin name) for every registered quantizer, third-party first."""
    from ..plugins import get_plugins

    return [(r.item, r.plugin) for r in get_plugins().collect("register_quantizers")]


def _implementing(field: str, attr: str, algo: str | None, where: str) -> Any | None:
    """The registered quantizer listing `algo` in its `attr`, None for no algorithm, else a one-line error
    naming the config field and what the loaded plugins implement."""
    if not algo:
        return None
    for q, _plugin in registered_quantizers():
        if algo in getattr(q, attr, ()):
            return q
    names = sorted({a for q, _ in registered_quantizers() for a in getattr(q, attr, ())})
    raise TrtGptError(f"{where}: quantization.{field} '{algo}' is not implemented by any loaded plugin "
                      f"(implemented: {', '.join(names) if names else 'none'})")


def quantizer_for(qcfg: QuantConfig, where: str = "config.json") -> Any | None:
    """The quantizer implementing `qcfg.quant_algo` (None when the weights are not quantized)."""
    return _implementing("quant_algo", "quant_algos", qcfg.quant_algo, where)


def kv_quantizer_for(qcfg: QuantConfig, where: str = "config.json") -> Any | None:
    """The quantizer implementing `qcfg.kv_cache_quant_algo` (None for a cache in the model's dtype)."""
    return _implementing("kv_cache_quant_algo", "kv_cache_quant_algos", qcfg.kv_cache_quant_algo, where)


def excluded(qcfg: QuantConfig, role: str, layer_idx: int | None) -> bool:
    """Whether `exclude_modules` (fnmatch patterns over module paths or role names) keeps a layer in float."""
    if not qcfg.exclude_modules:
        return False
    path = ROLE_PATHS[role] if layer_idx is None or role == "lm_head" else \
        f"transformer.layers.{layer_idx}.{ROLE_PATHS[role]}"
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(role, p) for p in qcfg.exclude_modules)


def linear_method(cfg: ModelConfig, role: str, layer_idx: int | None) -> Any | None:
    """The `LinearMethod` the configured quantizer gives a layer, or None for the plain float layer."""
    q = quantizer_for(cfg.quantization)
    if q is None or excluded(cfg.quantization, role, layer_idx):
        return None
    return q.linear_method(cfg, role, layer_idx)


def quantize_state(tensors: dict[str, torch.Tensor], cfg: ModelConfig, stats: Any | None = None,
                   where: str = "config.json") -> dict[str, torch.Tensor]:
    """Apply the configured quantizers' offline transforms to one rank's float state dict: the weights'
    (`quantize`), then the KV cache's (`quantize_kv`: its per-layer scales); identity where none is set."""
    q = quantizer_for(cfg.quantization, where)
    out = tensors if q is None else q.quantize(tensors, cfg, stats)
    kvq = kv_quantizer_for(cfg.quantization, where)
    out = out if kvq is None else kvq.quantize_kv(out, cfg, stats)
    # Scales a plugin makes from constants (random weights: activation and KV scales of 1) are born on the
    # CPU; every tensor of the rank lives where its float weights were (the GPU for random-weight engines)
    devices = {t.device for t in tensors.values()}
    if len(devices) == 1:
        device = devices.pop()
        out = {k: v if v.device == device else v.to(device) for k, v in out.items()}
    return out
