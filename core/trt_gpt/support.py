"""The one check that every feature an engine's configuration asks for is implemented by a loaded plugin.

Called at build and at engine load: a quantization algorithm, KV-cache type, LoRA rank or prompt-table size
that nothing implements is refused with one line, never silently run in full precision or ignored.
"""
from __future__ import annotations

from typing import Any

from .config import DTYPES, BuildConfig, ModelConfig
from .errors import TrtGptError


def registered_adapters() -> list[tuple[Any, str]]:
    """(adapter format, plugin name) for every format plugins registered through `register_adapters`."""
    from .plugins import get_plugins

    return [(r.item, r.plugin) for r in get_plugins().collect("register_adapters")]


def adapter_kinds() -> set[str]:
    """The adapter kinds ("lora", "prompt_table") some loaded plugin implements."""
    return {getattr(a, "kind", None) for a, _ in registered_adapters()} - {None}


def check_supported(cfg: ModelConfig, build: BuildConfig | None = None, where: str = "config.json") -> None:
    """Raise a one-line TrtGptError for the first configured feature no loaded plugin implements."""
    from .quant.registry import kv_quantizer_for, quantizer_for

    quantizer_for(cfg.quantization, where)
    kv_quantizer_for(cfg.quantization, where)
    if build is None:
        return
    if build.kv_cache_dtype is not None and build.kv_cache_dtype not in DTYPES:
        algo = cfg.quantization.kv_cache_quant_algo
        if algo is None or algo.lower() != str(build.kv_cache_dtype).lower():
            raise TrtGptError(f"{where}: build_config.kv_cache_dtype '{build.kv_cache_dtype}' needs a checkpoint "
                              f"quantized for it (quantization.kv_cache_quant_algo is {algo!r}); expected one of "
                              f"{', '.join(DTYPES)} or the checkpoint's own KV-cache algorithm")
    n = build.max_prompt_embedding_table_size
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise TrtGptError(f"{where}: build_config.max_prompt_embedding_table_size is {n!r}, expected an integer >= 0")
    kinds = adapter_kinds()
    if build.max_lora_rank and "lora" not in kinds:
        raise TrtGptError(f"{where}: build_config.max_lora_rank is {build.max_lora_rank} but no loaded plugin "
                          "implements LoRA adapters")
    if build.max_prompt_embedding_table_size and "prompt_table" not in kinds:
        raise TrtGptError(f"{where}: build_config.max_prompt_embedding_table_size is "
                          f"{build.max_prompt_embedding_table_size} but no loaded plugin implements prompt tables")
