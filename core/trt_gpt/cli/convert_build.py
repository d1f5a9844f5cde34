"""`trt-gpt convert`, `trt-gpt config` and `trt-gpt build`: the offline half of the workflow."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..checkpoint import load_checkpoint_config, write_json
from ..config import BuildConfig, ModelConfig
from ..errors import TrtGptError
from ..mapping import Mapping
from .build_switches import BuildSwitches
from .calibration import (calib_dataset_option, calib_max_seq_length_option, calib_size_option, calibration_stats,
                          needs_calibration)
from .common import err_console, human_bytes, lora_ckpt_source_option, progress


def convert_cmd(
    model_dir: Optional[Path] = typer.Option(None, "--model_dir", help="HF checkpoint directory."),
    nemo_ckpt_path: Optional[Path] = typer.Option(None, "--nemo_ckpt_path", help="A .nemo archive (GPT-Next)."),
    output_dir: Path = typer.Option(..., "--output_dir", help="Checkpoint directory to write."),
    dtype: str = typer.Option("float16", "--dtype", help="float32, float16 or bfloat16."),
    variant: Optional[str] = typer.Option(None, "--variant", "--gpt_variant",
                                          help="Variant name (see `trt-gpt variants list`); detected when omitted."),
    tp_size: int = typer.Option(1, "--tp_size", help="Tensor-parallel ranks."),
    pp_size: int = typer.Option(1, "--pp_size", help="Pipeline-parallel stages."),
    use_parallel_embedding: bool = typer.Option(False, "--use_parallel_embedding",
                                                help="Split the embedding table over the tensor-parallel ranks."),
    embedding_sharding_dim: int = typer.Option(0, "--embedding_sharding_dim",
                                               help="0: split the table by vocabulary, 1: by hidden size."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    # ---- weight-only quantization (INT8 / INT4, AWQ)
    use_weight_only: bool = typer.Option(False, "--use_weight_only",
                                         help="Quantize the linear layers' weights (not embeddings or lm_head)."),
    weight_only_precision: Optional[str] = typer.Option(None, "--weight_only_precision",
                                                        help="int8 (default) or int4."),
    group_size: Optional[int] = typer.Option(None, "--group_size",
                                             help="INT4 group-wise scales every N input columns (AWQ: 128)."),
    awq: bool = typer.Option(False, "--awq", help="INT4 group-wise with AWQ's activation-aware scales."),
    # ---- SmoothQuant W8A8 and the INT8 KV cache (calibrated)
    smoothquant: Optional[float] = typer.Option(None, "--smoothquant",
                                                help="SmoothQuant W8A8 with migration strength alpha in [0, 1]."),
    per_token: bool = typer.Option(False, "--per_token",
                                   help="SmoothQuant: per-token dynamic activation scales (default: static)."),
    per_channel: bool = typer.Option(False, "--per_channel",
                                     help="SmoothQuant: per-output-channel weight scales (default: per tensor)."),
    int8_kv_cache: bool = typer.Option(False, "--int8_kv_cache",
                                       help="An INT8 KV cache with calibrated per-layer K and V scales."),
    calib_dataset: Optional[Path] = calib_dataset_option("--awq, --smoothquant, --int8_kv_cache"),
    calib_size: int = calib_size_option(64),
    calib_max_seq_length: int = calib_max_seq_length_option(),
) -> None:
    """Convert a HuggingFace or NeMo checkpoint into a (sharded) trt-gpt checkpoint."""
    from ..convert import convert
    from ..quant.formats import smoothquant_config
    from ..quant.options import weight_only_config

    if (model_dir is None) == (nemo_ckpt_path is None):
        raise TrtGptError("convert: give exactly one of --model_dir or --nemo_ckpt_path")
    if tp_size < 1 or pp_size < 1:
        raise TrtGptError(f"convert: --tp_size ({tp_size}) and --pp_size ({pp_size}) must be positive")
    quant = smoothquant_config(smoothquant, per_token, per_channel, int8_kv_cache,
                               weight_only_config(use_weight_only, weight_only_precision, group_size, awq))
    calibrated = quant is not None and needs_calibration(quant.quant_algo, quant.kv_cache_quant_algo)
    if calib_dataset is not None and not calibrated:
        raise TrtGptError("convert: --calib_dataset is used by --awq, --smoothquant and --int8_kv_cache only")
    stats = calibration_stats(model_dir or nemo_ckpt_path, variant, quant, calib_dataset, calib_size,
                              calib_max_seq_length) if calibrated else None
    with progress("convert") as step:
        res = convert(model_dir or nemo_ckpt_path, output_dir, dtype, variant, tp_size, pp_size, overwrite,
                      use_parallel_embedding, embedding_sharding_dim, quantization=quant, stats=stats, progress=step)
    err_console.print(f"converted {res.variant} → {res.output_dir}: {res.config.mapping.world_size} rank(s), "
                      f"{res.num_tensors} tensors, {human_bytes(res.num_bytes)}, {res.config.dtype}, "
                      f"{progress.elapsed:.1f}s")


def config_cmd(
    architecture: str = typer.Option("GPTForCausalLM", "--architecture", help="Model class name."),
    vocab_size: int = typer.Option(..., "--vocab_size", help="Vocabulary size."),
    hidden_size: int = typer.Option(..., "--hidden_size", help="Hidden size."),
    num_hidden_layers: int = typer.Option(..., "--num_hidden_layers", help="Decoder layers."),
    num_attention_heads: int = typer.Option(..., "--num_attention_heads", help="Query heads."),
    num_key_value_heads: Optional[int] = typer.Option(None, "--num_key_value_heads",
                                                      help="KV heads (1: MQA); default: as many as query heads."),
    head_size: Optional[int] = typer.Option(None, "--head_size",
                                            help="Per-head size; default hidden_size / num_attention_heads."),
    intermediate_size: Optional[int] = typer.Option(None, "--intermediate_size",
                                                    help="MLP size; default 4 x hidden_size."),
    hidden_act: str = typer.Option("gelu", "--hidden_act", help="Activation (gelu, relu, swiglu, ...)."),
    max_position_embeddings: int = typer.Option(2048, "--max_position_embeddings", help="Longest sequence."),
    position_embedding_type: str = typer.Option("learned_absolute", "--position_embedding_type",
                                                help="learned_absolute or rope_gpt_neox."),
    dtype: str = typer.Option("float16", "--dtype", help="float32, float16 or bfloat16."),
    tp_size: int = typer.Option(1, "--tp_size", help="Tensor-parallel ranks."),
    pp_size: int = typer.Option(1, "--pp_size", help="Pipeline-parallel stages."),
    output_path: Path = typer.Option(..., "--output_path", help="config.json to write."),
    # ---- weight-only quantization of the random weights
    quantization: Optional[str] = typer.Option(None, "--quantization",
                                               help="w8a16, w4a16 (per channel; group-wise with --group_size), "
                                                    "w4a16_gptq (group-wise), w8a8_sq (SmoothQuant per token and "
                                                    "channel) or fp8."),
    group_size: Optional[int] = typer.Option(None, "--group_size", help="INT4 group size (input columns)."),
    kv_cache_dtype: Optional[str] = typer.Option(None, "--kv_cache_dtype", help="int8 or fp8: an 8-bit KV cache."),
) -> None:
    """Write a checkpoint config for a random-weight engine (benchmarking without a checkpoint)."""
    from ..quant.formats import random_weights_config

    quant = random_weights_config(quantization, group_size, kv_cache_dtype)
    if head_size is None and num_attention_heads > 0 and hidden_size % num_attention_heads:
        raise TrtGptError(f"config: --hidden_size {hidden_size} is not a multiple of --num_attention_heads "
                          f"{num_attention_heads}; give --head_size explicitly")
    cfg = ModelConfig(architecture=architecture, dtype=dtype, vocab_size=vocab_size, hidden_size=hidden_size,
                      num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                      num_key_value_heads=num_key_value_heads, head_size=head_size,
                      intermediate_size=intermediate_size,
                      hidden_act=hidden_act, max_position_embeddings=max_position_embeddings,
                      position_embedding_type=position_embedding_type, quantization=quant,
                      mapping=Mapping(world_size=tp_size * pp_size, tp_size=tp_size, pp_size=pp_size))
    cfg.validate("config")
    if quant.quant_algo:   # the group size must fit every layer (at this tp size): fail now, not at load
        from ..model import expected_tensors

        for rank in range(cfg.mapping.world_size):
            expected_tensors(dataclasses.replace(cfg, mapping=cfg.mapping.with_rank(rank)))
    d = cfg.to_dict()
    d["mapping"].pop("rank", None)
    if output_path.is_dir():
        raise TrtGptError(f"{output_path}: is a directory (--output_path names the config.json to write)")
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = output_path.with_name(f".{output_path.name}.tmp")
        write_json(tmp, d)
        tmp.replace(output_path)
    except OSError as e:
        raise TrtGptError(f"{output_path}: cannot write ({e.strerror or e})") from None
    err_console.print(f"wrote {output_path}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                      f"{cfg.attention_kind}, {cfg.dtype}")


def build_cmd(
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint_dir", help="A converted checkpoint."),
    model_config: Optional[Path] = typer.Option(None, "--model_config",
                                                help="A config.json from `trt-gpt config`: random weights."),
    output_dir: Path = typer.Option(..., "--output_dir", help="Engine directory to write."),
    max_batch_size: int = typer.Option(256, "--max_batch_size", help="Requests in flight."),
    max_input_len: Optional[int] = typer.Option(None, "--max_input_len",
                                                help="Longest prompt; default 1024, capped below max_seq_len."),
    max_seq_len: Optional[int] = typer.Option(None, "--max_seq_len",
                                              help="Prompt + output; default: the model's positions."),
    max_num_tokens: int = typer.Option(8192, "--max_num_tokens", help="Tokens per executor step."),
    tokens_per_block: int = typer.Option(64, "--tokens_per_block", help="KV cache block size in tokens."),
    max_beam_width: int = typer.Option(1, "--max_beam_width", help="Largest --num_beams the engine serves."),
    gemm_plugin: str = typer.Option("auto", "--gemm_plugin", help="auto or the engine dtype (checked)."),
    gpt_attention_plugin: str = typer.Option("auto", "--gpt_attention_plugin",
                                             help="auto or the engine dtype (checked)."),
    context_fmha: str = typer.Option("enable", "--context_fmha",
                                     help="enable: fused prompt attention; disable: the unfused one."),
    paged_kv_cache: str = typer.Option("enable", "--paged_kv_cache", help="enable (always paged)."),
    remove_input_padding: str = typer.Option("enable", "--remove_input_padding", help="enable (always packed)."),
    lora_plugin: str = typer.Option("disable", "--lora_plugin", help="disable, or auto / a dtype with LoRA."),
    max_prompt_embedding_table_size: int = typer.Option(
        0, "--max_prompt_embedding_table_size",
        help="Rows of the prompt-tuning table pool (tasks x virtual tokens of the tables loaded at once)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    workers: int = typer.Option(1, "--workers", help="Ranks built at a time, each in its own process."),
    # ---- LoRA (docs/lora.md)
    lora_dir: Optional[list[Path]] = typer.Option(None, "--lora_dir", help="LoRA adapters, task uids 0, 1, ... in order."),
    max_lora_rank: int = typer.Option(0, "--max_lora_rank", help="Default 64 with --lora_dir or --lora_plugin."),
    lora_target_modules: Optional[list[str]] = typer.Option(
        None, "--lora_target_modules",
        help="attn_qkv attn_q attn_k attn_v attn_dense mlp_h_to_4h mlp_gate mlp_4h_to_h (default: the adapters')."),
    lora_ckpt_source: str = lora_ckpt_source_option(),
) -> None:
    """Build an engine directory for the given limits."""
    from ..build import build

    if (checkpoint_dir is None) == (model_config is None):
        raise TrtGptError("build: give exactly one of --checkpoint_dir or --model_config")
    cfg = read_model_config(model_config) if model_config is not None else None
    dtype = cfg.dtype if cfg is not None else load_checkpoint_config(checkpoint_dir).dtype
    fmha = BuildSwitches(gemm_plugin, gpt_attention_plugin, lora_plugin, context_fmha, paged_kv_cache,
                         remove_input_padding).check(dtype)
    bc = BuildConfig(max_batch_size=max_batch_size, max_input_len=max_input_len, max_seq_len=max_seq_len,
                     max_num_tokens=max_num_tokens, tokens_per_block=tokens_per_block, max_beam_width=max_beam_width,
                     context_fmha=fmha, max_lora_rank=max_lora_rank or (64 if lora_plugin != "disable" else 0),
                     lora_target_modules=lora_target_modules or None,
                     max_prompt_embedding_table_size=max_prompt_embedding_table_size)
    with progress("build") as step:
        cfg = build(output_dir, bc, checkpoint_dir=checkpoint_dir, model_config=cfg, overwrite=overwrite,
                    progress=step, workers=workers, lora_dirs=lora_dir, lora_ckpt_source=lora_ckpt_source)
    err_console.print(f"built engine → {output_dir}: {cfg.mapping.world_size} rank(s), max_batch_size "
                      f"{bc.max_batch_size}, max_input_len {bc.max_input_len}, max_seq_len {bc.max_seq_len}, "
                      f"{progress.elapsed:.1f}s")


# Keys of the reference's checkpoint config (generate_checkpoint_config.py) that trt-gpt reads under another
# name or that must keep the one value trt-gpt implements.
_ALIASES = {"layernorm_epsilon", "share_embedding_table", "n_positions"}
_FIXED = {"apply_query_key_layer_scaling": False, "logits_dtype": "float32"}
_HF_KEYS = {"model_type", "architectures", "n_embd", "n_layer", "n_head", "transformers_version", "torch_dtype"}


def read_model_config(path: Path) -> ModelConfig:
    """A checkpoint config for random weights: unknown keys are an error naming them (a misspelled key would
    otherwise build a different model), and a HuggingFace config.json is recognised as such."""
    import dataclasses

    from ..config import read_json

    raw = read_json(path)
    if not isinstance(raw, dict):
        raise TrtGptError(f"{path}: expected a JSON object")
    if _HF_KEYS & set(raw) and "architecture" not in raw:
        raise TrtGptError(f"{path}: this is a HuggingFace config.json; convert the checkpoint first "
                          f"(trt-gpt convert --model_dir {path.parent} --output_dir CKPT) and build with "
                          "--checkpoint_dir CKPT")
    known = {f.name for f in dataclasses.fields(ModelConfig)} | _ALIASES | set(_FIXED) | {"variant"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TrtGptError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          "(see `trt-gpt config` for the fields)")
    for key, value in _FIXED.items():
        if key in raw and raw[key] != value:
            raise TrtGptError(f"{path}: '{key}' is {raw[key]!r}; trt-gpt implements only {value!r}")
    return ModelConfig.from_dict({k: v for k, v in raw.items() if k not in _FIXED}, str(path))


__all__ = ["convert_cmd", "config_cmd", "build_cmd"]
