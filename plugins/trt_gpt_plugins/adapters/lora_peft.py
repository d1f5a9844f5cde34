"""HF PEFT LoRA adapters: a directory with adapter_config.json and adapter_model.safetensors (or a .bin,
read with torch.load(weights_only=True)), for every variant whose weight map names its modules.

Supported: any rank (per module through the tensors' own shapes, checked against `r`/`rank_pattern`),
`lora_alpha`/`alpha_pattern`, `use_rslora` (scale alpha / sqrt(r) instead of alpha / r), Conv1D
(`fan_in_fan_out`) and Linear layouts (PEFT stores lora_A [r, in] and lora_B [out, r] in both), fused or
separate q/k/v targets, MLP targets. Refused with one line naming the field: DoRA, `modules_to_save`,
trainable LoRA biases, embedding or lm_head targets, layer replication, trainable token indices.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.lora.canonical import LoraAdapter, LoraBuilder
from trt_gpt.lora.targets import TargetMap, variant_of

from .peft_dir import CONFIG_NAME, read_peft_config, read_peft_weights

_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")
# config fields whose non-default value asks for something a LoRA delta on a linear layer cannot express
_REFUSED = {
    "use_dora": "DoRA (a weight-decomposed update, not a low-rank delta)",
    "modules_to_save": "fully trained modules saved with the adapter",
    "layer_replication": "replicated layers",
    "trainable_token_indices": "trained embedding rows",
    "alora_invocation_tokens": "activated LoRA",
    "lora_bias": "trained LoRA biases",
    "target_parameters": "LoRA on raw parameters",
}


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule: the first pattern key matching the end of the module name (`(.*\\.)?(key)$`)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class PeftLora:
    name = "peft"
    aliases = ("hf",)
    kind = "lora"
    description = "HF PEFT LoRA directory (adapter_config.json + adapter_model.safetensors or .bin)"

    @staticmethod
    def detect(path: Path) -> bool:
        return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()

    def load(self, path: str | Path, config: ModelConfig, name: str | None = None) -> LoraAdapter:
        path = Path(path)
        cfg_file, pc = read_peft_config(path, "LORA", default="LORA")
        for fld, what in _REFUSED.items():
            if pc.get(fld):
                raise TrtGptError(f"{cfg_file}: field '{fld}' is {pc[fld]!r}: {what} cannot be applied as a LoRA "
                                  "adapter (expected it unset)")
        if pc.get("bias", "none") != "none":
            raise TrtGptError(f"{cfg_file}: field 'bias' is {pc['bias']!r}: trained biases cannot be applied as a "
                              "LoRA adapter (expected 'none')")
        alpha, r0 = pc.get("lora_alpha", 8), pc.get("r", 8)
        rank_pat, alpha_pat = pc.get("rank_pattern") or {}, pc.get("alpha_pattern") or {}
        rslora = bool(pc.get("use_rslora", False))
        targets = TargetMap(variant_of(config, str(path)), config)
        _, tensors = read_peft_weights(path)
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            m = _KEY.match(key)
            if m is None:
                if "lora_embedding" in key:
                    raise TrtGptError(f"{path}: tensor '{key}': an embedding target cannot take a LoRA adapter here")
                if "lora_magnitude_vector" in key:
                    raise TrtGptError(f"{path}: tensor '{key}': DoRA (field 'use_dora') cannot be applied")
                raise TrtGptError(f"{path}: tensor '{key}' is not a LoRA A/B matrix (modules_to_save or another "
                                  "PEFT method)")
            pairs.setdefault(m.group(1), {})[m.group(2)] = t
        builder = LoraBuilder(name or path.name, config, str(path))
        for module, ab in sorted(pairs.items()):
            if set(ab) != {"A", "B"}:
                raise TrtGptError(f"{path}: module '{module}' has lora_{''.join(ab)} but not its pair")
            a, b = ab["A"], ab["B"]
            rank = int(a.shape[0])
            want = _pattern_value(rank_pat, module, r0)
            if rank != want:
                raise TrtGptError(f"{path}: module '{module}': lora_A has rank {rank}, adapter_config.json "
                                  f"('r'/'rank_pattern') says {want}")
            a_ = float(_pattern_value(alpha_pat, module, alpha))
            scale = a_ / (rank ** 0.5) if rslora else a_ / rank
            layer, role, rows = targets.resolve(module, str(path))
            builder.add(layer, role, a, b, scale, rows, what=module)
        return builder.build()
