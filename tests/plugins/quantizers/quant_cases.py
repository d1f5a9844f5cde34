"""Shared cases of the W8A8 / FP8 engine tests: a tiny trained-shape GPT-2 from HF, its linear modules under
canonical names, activation statistics recorded with hooks on the HF model (the calibration), and the
statistics interface quantizers read."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.testing import save_tiny

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
