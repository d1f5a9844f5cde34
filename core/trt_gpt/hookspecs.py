"""Every hook a plugin can implement. Plugins receive a `register` callback and call it once per thing they add.

A variant package implements `register_variants`; built-in plugins (plugins/trt_gpt_plugins) implement the
rest through the same hooks, so third parties can add or replace any of them.
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("trt_gpt")
hookimpl = pluggy.HookimplMarker("trt_gpt")


@hookspec
def register_variants(register: Callable[[Any], None]) -> None:
    """Add model variants.

    :param register: call ``register(VariantSpec(...))`` once per variant the plugin provides; see
        :class:`trt_gpt.variants.VariantSpec` for the fields (name, detection, config translation, weight map).
    """


@hookspec
def register_checkpoint_sources(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Add readers of source checkpoints (HF directories, archives, random weights).

    :param register: call ``register(format_name, opener)`` where ``opener(path) -> SourceCheckpoint | None``
        returns a reader for ``path`` or None when the path is not in this format.
    """


@hookspec
def register_activations(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Add MLP activation functions, looked up by ``ModelConfig.hidden_act``.

    :param register: call ``register(name, fn)`` with ``fn(tensor) -> tensor``; gated activations are named
        after their gate (``swiglu`` registers silu and the model multiplies by the gate branch).
    """


@hookspec
def register_norms(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Add normalisation layers, looked up by ``ModelConfig.norm_type``.

    :param register: call ``register(name, factory)`` where ``factory(size, eps) -> torch.nn.Module`` maps
        [..., size] to the same shape; its parameters are the checkpoint's ``weight`` (and ``bias``) of
        every norm (``input_layernorm``, ``post_layernorm``, ``ln_f``).
    """


@hookspec
def register_position_encodings(register: Callable[[str, Any], None]) -> None:
    """Add position encodings, looked up by ``ModelConfig.position_embedding_type``.

    :param register: call ``register(name, factory)`` where ``factory(config, device) -> encoder`` and the
        encoder has ``apply(q, k, positions) -> (q, k)`` for rotary kinds or ``learned = True`` for tables.
    """


@hookspec
def register_quantizers(register: Callable[[Any], None]) -> None:
    """Add quantization methods: an offline transform of a rank's state dict and a runtime weight format.

    :param register: call ``register(quantizer)`` once per quantizer; see
        :class:`trt_gpt.quant.registry.Quantizer`: ``name``, ``quant_algos`` (the ``quantization.quant_algo``
        values it implements, e.g. ``("W8A16", "W4A16")``), ``kv_cache_quant_algos`` (``("INT8",)`` or ``()``),
        ``linear_method(cfg, role, layer_idx)`` returning a :class:`trt_gpt.model.linear.LinearMethod` (or None
        to keep that layer in float) and ``quantize(tensors, cfg, stats) -> tensors`` for one rank's whole
        state dict after sharding. A config naming an algorithm no quantizer claims is refused at convert,
        build and load.
    """


@hookspec
def register_adapters(register: Callable[[Any], None]) -> None:
    """Add adapter formats (LoRA, prompt-tuning tables).

    :param register: call ``register(adapter)`` where the adapter has ``name`` (the format, e.g. ``"peft"``,
        ``"nemo"``, ``"npy"``), ``kind`` (``"lora"`` or ``"prompt_table"``), ``description``, ``detect(path) ->
        bool`` and ``load``: for ``"lora"``, ``load(path, config, name=None)`` returning a
        :class:`trt_gpt.lora.canonical.LoraAdapter` (per layer and role A [r, in], B [out, r] and a scale, for
        the whole model; :class:`trt_gpt.lora.canonical.LoraBuilder` places q/k/v pieces), optional
        ``aliases`` (``--lora_ckpt_source`` names); for ``"prompt_table"``, ``load(path, config)`` returning
        one float32 tensor [tasks, virtual tokens, hidden] (checked against the engine by
        :mod:`trt_gpt.runtime.prompt_pool`), optional ``aliases``. A build asking for LoRA (``max_lora_rank``)
        or prompt tables (``max_prompt_embedding_table_size``) with no plugin of that kind is refused.
    """


@hookspec
def register_kernels(register: Callable[[Any], None]) -> None:
    """Add attention/GEMM backends with a capability check.

    :param register: call ``register(backend)`` where the backend has ``name``, ``priority`` and
        ``available(device, dtype) -> bool``.
    """


@hookspec
def register_commands(app: Any) -> None:
    """Add CLI sub-commands.

    :param app: the root ``typer.Typer`` application; call ``app.command()`` or ``app.add_typer()``.
    """


@hookspec(firstresult=True)
def detect_variant(source: Any) -> str | None:
    """Name the variant that handles a source checkpoint, overriding detection by ``VariantSpec.detect``.

    :param source: the opened :class:`trt_gpt.sources.SourceCheckpoint`.
    :return: a variant name, or None to leave the decision to the registered variants.
    """
