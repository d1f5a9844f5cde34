"""Test helpers for LoRA: PEFT adapters with random (non-zero) weights on a saved HF model, and the
PEFT model's logits as the oracle. Imported only by tests (needs `peft`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch


def make_peft_adapter(base_dir: str | Path, out_dir: str | Path, seed: int = 0, std: float = 0.2,
                      **lora_kw: Any) -> Path:
    """A PEFT LoRA for the HF model in `base_dir`, A and B drawn N(0, std) so the delta is large enough to
    see; `lora_kw` are LoraConfig fields (r, lora_alpha, target_modules, rank_pattern, use_rslora, ...)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    lora_kw.setdefault("init_lora_weights", False)
    model = get_peft_model(base, LoraConfig(**lora_kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def peft_model(base_dir: str | Path, adapter_dir: str | Path | None) -> Any:
    """The base model with the adapter applied by PEFT (or the bare base for None), fp32, eval."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    if adapter_dir is None:
        return base
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def peft_logits(model: Any, prompt: Sequence[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([list(prompt)])).logits[0].float()


def peft_greedy(model: Any, prompt: Sequence[int], n: int) -> list[int]:
    """n greedy tokens by repeated full forwards (no generate: PeftModel.generate's kwargs vary by version)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(peft_logits(model, ids)[-1].argmax()))
    return ids[len(prompt):]
