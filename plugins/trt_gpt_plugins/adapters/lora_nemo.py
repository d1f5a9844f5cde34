"""NeMo LoRA adapters: a `.nemo` archive (or its unpacked directory) holding model_config.yaml with a
`peft.lora_tuning` section and model_weights.ckpt with `adapter_layer.lora_*_adapter.linear_in/linear_out`
weights, legacy (`language_model.encoder.layers`) or Megatron-core (`decoder.layers`) names.

The archive is read by the gpt-next variant's `.nemo` reader (the same traversal guards and weights-only
loading as the model's). Targets: `lora_kqv_adapter` (attn_qkv; linear_out rows grouped per query group as
NeMo's fused QKV, regrouped by the variant's `regroup_qkv`), `lora_dense_attention_adapter` (attn_dense),
`lora_hto4h_adapter` (mlp fc1; a GLU's [activated; up] rows split into fc and gate) and
`lora_4htoh_adapter` (mlp fc2). Scale alpha / adapter_dim (alpha defaults to adapter_dim). Adapters saved
from tensor-parallel training (several model_weights.ckpt) are refused.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.lora.canonical import LoraAdapter, LoraBuilder

from .nemo_archive import looks_like_nemo, open_adapter_archive

_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attention|mlp)\.adapter_layer\.(lora_\w+?_adapter)\."
                  r"linear_(in|out)\.weight$")
_TARGETS = {"lora_kqv_adapter": "qkv", "lora_dense_attention_adapter": "dense", "lora_hto4h_adapter": "fc",
            "lora_4htoh_adapter": "proj"}


class NemoLora:
    name = "nemo"
    aliases = ()
    kind = "lora"
    description = "NeMo LoRA .nemo archive (lora_kqv / dense_attention / hto4h / 4htoh adapters)"

    @staticmethod
    def detect(path: Path) -> bool:
        return looks_like_nemo(path)

    def load(self, path: str | Path, config: ModelConfig, name: str | None = None) -> LoraAdapter:
        path = Path(path)
        with open_adapter_archive(path, "LoRA adapter") as src:
            from trt_gpt_gpt_next.nemo_weights import regroup_qkv   # importable: the archive opened

            tuning = (src.config.get("peft") or {}).get("lora_tuning") or {}
            pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
            for key in src.names():
                m = _KEY.search(key)
                if m is None:
                    raise TrtGptError(f"{path}: tensor '{key}' is not a LoRA adapter weight (expected "
                                      "...adapter_layer.lora_*_adapter.linear_in/linear_out.weight)")
                if m.group(2) not in _TARGETS:
                    raise TrtGptError(f"{path}: tensor '{key}': adapter '{m.group(2)}' cannot be applied here "
                                      f"(supported: {', '.join(_TARGETS)})")
                pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = src.tensor(key)
            builder = LoraBuilder(name or path.name, config, str(path))
            for (layer, kind), t in sorted(pairs.items()):
                if set(t) != {"in", "out"}:
                    raise TrtGptError(f"{path}: layer {layer} {kind} has linear_{''.join(t)} but not its pair")
                a, b = t["in"].float(), t["out"].float()
                dim = int(a.shape[0])
                scale = float(tuning.get("alpha", dim)) / dim
                role = _TARGETS[kind]
                if role == "qkv":
                    b = regroup_qkv(b, config)
                if role == "fc" and config.is_gated:
                    act, up = b.chunk(2, dim=0)      # NeMo's fc1 holds [activated; up]
                    builder.add(layer, "fc", a, act, scale)
                    builder.add(layer, "gate", a, up, scale)
                    continue
                builder.add(layer, role, a, b, scale)
            return builder.build()
