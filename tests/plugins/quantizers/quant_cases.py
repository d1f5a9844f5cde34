"""Shared cases of the W8A8 / FP8 engine tests: a tiny trained-shape GPT-2 from HF, its linear modules under
canonical names, activation statistics recorded with hooks on the HF model (the calibration), the
statistics interface quantizers read, the quantized engine built from them, and the engine's worst logit
error against a float64 HF reference that applies the format's definition."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, QuantConfig
from trt_gpt.convert import convert
from trt_gpt.runtime.llm import LLM
from trt_gpt.testing import random_prompts, save_tiny

# canonical module -> HF GPT-2 module path (its Conv1D holds W^T)
MODS = {"attention.qkv": "attn.c_attn", "attention.dense": "attn.c_proj", "mlp.fc": "mlp.c_fc",
        "mlp.proj": "mlp.c_proj"}


def hf_tiny(path):
    model = save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=128,
                                                  initializer_range=0.2, bos_token_id=0, eos_token_id=0), path)
    return model


def hf_module(hf, i, mod):
    obj = hf.transformer.h[i]
    for part in MODS[mod].split("."):
        obj = getattr(obj, part)
    return obj


def record_absmax(hf, prompts, outputs=None):
    """Per-input-channel abs-max of every linear's input over the prompts (the calibration statistics); with
    a dict `outputs`, also each qkv output column's abs-max into it."""
    stats, hooks = {}, []
    for i in range(len(hf.transformer.h)):
        for mod in MODS:
            name = f"transformer.layers.{i}.{mod}"

            def hook(m, inp, name=name):
                a = inp[0].detach().reshape(-1, inp[0].shape[-1]).abs().amax(0).float()
                stats[name] = a if name not in stats else torch.maximum(stats[name], a)
            hooks.append(hf_module(hf, i, mod).register_forward_pre_hook(hook))
            if outputs is not None and mod == "attention.qkv":
                def out_hook(m, inp, out, name=name):
                    a = out.detach().reshape(-1, out.shape[-1]).abs().amax(0).float()
                    outputs[name] = a if name not in outputs else torch.maximum(outputs[name], a)
                hooks.append(hf_module(hf, i, mod).register_forward_hook(out_hook))
    with torch.no_grad():
        for p in prompts:
            hf(torch.tensor([p]))
    for h in hooks:
        h.remove()
    return stats


class Stats:
    """The calibration-statistics interface quantizers read (tp 1: every rank sees the whole layer)."""

    def __init__(self, absmax, out_absmax=None):
        self.absmax, self.out_absmax = absmax, out_absmax or {}

    def for_rank(self, name, parallel, cfg):
        return SimpleNamespace(in_absmax=self.absmax[name], out_absmax=self.out_absmax.get(name))


def quantized_engine(tmp_path, qcfg: QuantConfig, dtype: str = "float32"):
    """hf_tiny under tmp_path/hf, calibrated on three random prompts, converted with `qcfg` and built into
    tmp_path/engine; returns (the HF model, the statistics, the checkpoint's rank-0 tensors)."""
    from safetensors.torch import load_file

    hf = hf_tiny(tmp_path / "hf")
    absmax = record_absmax(hf, random_prompts(211, [40, 33, 50], seed=3))
    convert(tmp_path / "hf", tmp_path / "ckpt", dtype=dtype, quantization=qcfg, stats=Stats(absmax), overwrite=True)
    build(tmp_path / "engine", BuildConfig(max_input_len=64, tokens_per_block=16), checkpoint_dir=tmp_path / "ckpt")
    return hf, absmax, load_file(str(tmp_path / "ckpt" / "rank0.safetensors"))


def worst_logit_error(engine_dir, ref, relative: bool = False) -> float:
    """The largest |engine logit - reference logit| over three random prompts (divided by the prompt's
    largest reference logit when `relative`); the engine on CPU runs the exact integer / emulated FP8 path."""
    llm = LLM(engine_dir, device="cpu")
    prompts = random_prompts(211, [12, 30, 7], seed=9)
    worst = 0.0
    for p, got in zip(prompts, llm.score(prompts)):
        with torch.no_grad():
            want = ref(torch.tensor([p])).logits[0]
        err = (got.double() - want).abs().max()
        worst = max(worst, (err / want.abs().max() if relative else err).item())
    return worst
