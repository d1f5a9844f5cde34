"""Attention backend registry: which implementation writes the KV cache and runs paged attention.

Two backends: "torch" (the reference in attention_ref.py; always available, the CPU path) and "triton"
(the kernels in triton_attention.py; available on CUDA devices, or anywhere under TRITON_INTERPRET=1 so
the kernels can be tested on CPU). The environment variable TRT_GPT_ATTENTION_BACKEND=torch|triton forces
one; forcing one that cannot run here is a user error (TrtGptError), not a silent fallback.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..env import choice, env_setting
from ..errors import TrtGptError
from .metadata import AttentionMetadata
from .attention_ref import paged_attention_ref
from .kv_cache_spec import write_kv_ref

ENV_VAR = "TRT_GPT_ATTENTION_BACKEND"
BACKEND_NAMES = ("torch", "triton")

WriteKV = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, float, "int | None"],
                     torch.Tensor]


@dataclass(frozen=True)
class AttentionBackend:
    """One way to run the cache write and paged attention; `attention` dispatches decode vs prefill itself."""
    name: str
    write_kv: WriteKV
    _attention: Attention
    # Optional fused RoPE + cache write (q/k rotated, k/v stored; returns q); None: the model composes
    # the position encoding's own `apply` with `write_kv`.
    rope_write_kv: Callable[..., torch.Tensor] | None = None

    def attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                  scale: float, sliding_window: int | None = None,
                  kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`kv_scales`: this layer's (K, V) scales of an 8-bit cache (only backends that read one get them:
        `KVCacheSpec.require_backend`)."""
        if kv_scales is None:
            return self._attention(q, k_cache, v_cache, meta, scale, sliding_window)
        return self._attention(q, k_cache, v_cache, meta, scale, sliding_window, kv_scales=kv_scales)


def _interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when the Triton backend can run on this device and dtype, else why not (one phrase)."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {dtype} is not supported by the Triton kernels"
    if device.type != "cuda" and not _interpret_mode():
        return f"device {device} is not a CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the triton package is not installed (pip install 'trt-gpt[gpu]')"
    return None


def torch_backend() -> AttentionBackend:
    return AttentionBackend("torch", write_kv_ref, paged_attention_ref)


def _triton_backend(context_fp32_acc: bool = True) -> AttentionBackend:
    # Imported lazily: importing defines the @triton.jit kernels, which must happen after TRITON_INTERPRET
    # is set, and keeps `import trt_gpt` working where triton is absent.
    from .kv_store import write_kv_cache_triton
    from .triton_attention import paged_attention_triton
    from .triton_rope_kv import rope_write_kv_triton
    return AttentionBackend("triton", write_kv_cache_triton,
                            functools.partial(paged_attention_triton, context_fp32_acc=context_fp32_acc),
                            rope_write_kv_triton)


def available_backends(device: torch.device, dtype: torch.dtype) -> list[str]:
    names = ["torch"]
    if _triton_unavailable_reason(device, dtype) is None:
        names.append("triton")
    return names


def get_attention_backend(device: torch.device | str, dtype: torch.dtype,
                          context_fp32_acc: bool = True) -> AttentionBackend:
    """The backend for tensors on `device` with `dtype`: the env override if set, else the fastest usable.

    Automatic choice takes Triton only on CUDA: an interpreted kernel on CPU is correct but far slower
    than the torch reference, so TRITON_INTERPRET alone does not switch a CPU run over.
    """
    device = torch.device(device)
    forced = env_setting(ENV_VAR, choice(*BACKEND_NAMES), "")
    if forced:
        if forced == "triton":
            reason = _triton_unavailable_reason(device, dtype)
            if reason is not None:
                raise TrtGptError(f"{ENV_VAR}=triton: the Triton attention backend is unavailable: {reason}")
            return _triton_backend(context_fp32_acc)
        return torch_backend()
    if device.type == "cuda" and _triton_unavailable_reason(device, dtype) is None:
        return _triton_backend(context_fp32_acc)
    return torch_backend()


# The name the package docstring (kernels/__init__.py) uses for the same selection.
select_attention_backend = get_attention_backend
