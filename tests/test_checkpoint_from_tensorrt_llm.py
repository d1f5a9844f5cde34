"""A checkpoint directory in the form TensorRT-LLM's GPT `convert_checkpoint.py` writes builds and runs as is
(docs/coming-from-tensorrt-llm.md, "Moving a TensorRT-LLM checkpoint over"), and the cases that doc says
are refused are refused.

The checkpoint is written here from the HF weights the way the reference writes it (its config fields,
tensor names, Conv1D transposes, the lm_head kept when `share_embedding_table` is false), not by trt-gpt's
convert; HF transformers is the oracle for the logits.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.build import build
from trt_gpt.config import BuildConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.testing import save_tiny

HF = dict(n_layer=2, n_embd=48, n_head=4, vocab_size=101, n_positions=64, activation_function="gelu_new",
          initializer_range=0.2)  # weights large enough that activation variants differ beyond 1e-4


def reference_config(hf: GPT2Config, **overrides) -> dict:
    """config.json with the fields of the reference's GPTConfig / PretrainedConfig for an fp32 GPT-2."""
    cfg = {
        "architecture": "GPTForCausalLM", "dtype": "float32", "logits_dtype": "float32",
        "vocab_size": hf.vocab_size, "max_position_embeddings": hf.n_positions, "hidden_size": hf.n_embd,
        "num_hidden_layers": hf.n_layer, "num_attention_heads": hf.n_head, "num_key_value_heads": hf.n_head,
        "head_size": hf.n_embd // hf.n_head, "qk_layernorm": False, "hidden_act": hf.activation_function,
        "intermediate_size": 4 * hf.n_embd, "norm_epsilon": hf.layer_norm_epsilon,
        "position_embedding_type": "learned_absolute", "use_parallel_embedding": False,
        "embedding_sharding_dim": 0, "share_embedding_table": False,
        "mapping": {"world_size": 1, "gpus_per_node": 8, "cp_size": 1, "tp_size": 1, "pp_size": 1,
                    "moe_tp_size": 1, "moe_ep_size": 1},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None, "group_size": 128,
                         "smoothquant_val": 0.5, "clamp_val": None, "has_zero_point": False,
                         "pre_quant_scale": False, "exclude_modules": None},
        "kv_dtype": "float32", "rotary_scaling": None, "residual_mlp": False, "bias": True, "q_scaling": 1.0,
        "embedding_scale": None, "apply_query_key_layer_scaling": False, "rotary_pct": 1.0,
        "rotary_base": 10000.0, "gpt_variant": "gpt2",
    }
    cfg.update(overrides)
    return cfg


def reference_weights(model: GPT2LMHeadModel, share_embedding_table: bool = False) -> dict[str, torch.Tensor]:
    """rank0.safetensors as the reference's `load_weights_from_hf_model` fills it at tp 1 (Conv1D transposed)."""
    p = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {"transformer.vocab_embedding.weight": p["transformer.wte.weight"],
           "transformer.position_embedding.weight": p["transformer.wpe.weight"],
           "transformer.ln_f.weight": p["transformer.ln_f.weight"], "transformer.ln_f.bias": p["transformer.ln_f.bias"]}
    for i in range(model.config.n_layer):
        src, dst = f"transformer.h.{i}", f"transformer.layers.{i}"
        for hf_name, name in (("attn.c_attn", "attention.qkv"), ("attn.c_proj", "attention.dense"),
                              ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):
            out[f"{dst}.{name}.weight"] = p[f"{src}.{hf_name}.weight"].t().contiguous()
            out[f"{dst}.{name}.bias"] = p[f"{src}.{hf_name}.bias"]
        for hf_name, name in (("ln_1", "input_layernorm"), ("ln_2", "post_layernorm")):
            out[f"{dst}.{name}.weight"] = p[f"{src}.{hf_name}.weight"]
            out[f"{dst}.{name}.bias"] = p[f"{src}.{hf_name}.bias"]
    if not share_embedding_table:
        out["lm_head.weight"] = p["transformer.wte.weight"].clone()
    return out


def write_checkpoint(d: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "rank0.safetensors"))
    return d


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> GPT2LMHeadModel:
    return save_tiny(GPT2LMHeadModel, GPT2Config(**HF), tmp_path_factory.mktemp("hf") / "gpt2")


def _build(ckpt: Path, out: Path) -> Path:
    build(out, BuildConfig(max_batch_size=4, max_input_len=32, max_seq_len=64, tokens_per_block=16),
          checkpoint_dir=ckpt)
    return out


def test_reference_checkpoint_builds_and_matches_hf(hf, tmp_path):
    from trt_gpt import LLM

    ckpt = write_checkpoint(tmp_path / "ckpt", reference_config(hf.config), reference_weights(hf))
    llm = LLM(str(_build(ckpt, tmp_path / "engine")), device="cpu")
    ids = [5, 17, 3, 99, 42, 0, 64]
    ours = llm.score([ids])[0]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (ours - ref).abs().max()


def test_shared_embedding_table_without_lm_head_is_refused(hf, tmp_path):
    ckpt = write_checkpoint(tmp_path / "ckpt", reference_config(hf.config, share_embedding_table=True),
                            reference_weights(hf, share_embedding_table=True))
    with pytest.raises(TrtGptError, match="missing tensor 'lm_head.weight'"):
        _build(ckpt, tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


def test_quantized_checkpoint_is_refused(hf, tmp_path):
    w = reference_weights(hf)
    w["transformer.layers.0.attention.qkv.per_channel_scale"] = torch.ones(3 * HF["n_embd"])
    cfg = reference_config(hf.config, quantization={"quant_algo": "W8A16", "kv_cache_quant_algo": None})
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, w)
    # a W8A16 checkpoint whose weights are not the int8 layout we store (TensorRT-LLM's own packing differs)
    # is refused by the build's tensor check, naming the first tensor that does not fit
    with pytest.raises(TrtGptError, match="qkv.weight' is torch.float32, expected torch.int8"):
        _build(ckpt, tmp_path / "engine")
