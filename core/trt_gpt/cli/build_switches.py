"""The reference's `trtllm-build` plugin switches, mapped onto what trt-gpt has.

`--gemm_plugin`, `--gpt_attention_plugin` and `--lora_plugin` take `auto` or a dtype (checked against the
engine's dtype: one engine runs in one dtype) or `disable`; `--context_fmha`, `--paged_kv_cache` and
`--remove_input_padding` take `enable` or `disable`. `--lora_plugin` other than `disable` needs a LoRA
plugin at build time and makes the engine take adapters (max_lora_rank 64 unless given; docs/lora.md). Where trt-gpt has exactly one way of doing the job
(its own GEMMs and paged attention, a paged KV cache, packed tokens without padding), `disable` is refused
with the reason; `--context_fmha disable` selects the unfused attention (the torch reference).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import TrtGptError

DTYPE_CHOICES = ("auto", "float16", "bfloat16", "float32", "disable")
SWITCH_CHOICES = ("enable", "disable")

# switch -> why `disable` is not available
ALWAYS_ON = {
    "--gemm_plugin": "trt-gpt runs every linear layer through its own GEMM kernels; there is no other path",
    "--gpt_attention_plugin": "trt-gpt's attention always runs over the paged KV cache; there is no other path",
    "--paged_kv_cache": "the KV cache is always paged (in-flight batching depends on it)",
    "--remove_input_padding": "steps always run packed tokens without padding",
}


@dataclass
class BuildSwitches:
    gemm_plugin: str = "auto"
    gpt_attention_plugin: str = "auto"
    lora_plugin: str = "disable"
    context_fmha: str = "enable"
    paged_kv_cache: str = "enable"
    remove_input_padding: str = "enable"

    def check(self, engine_dtype: str) -> bool:
        """Validate against the engine's dtype; returns whether the fused (flash) prompt attention is on."""
        for flag, value, choices in (
                ("--gemm_plugin", self.gemm_plugin, DTYPE_CHOICES),
                ("--gpt_attention_plugin", self.gpt_attention_plugin, DTYPE_CHOICES),
                ("--lora_plugin", self.lora_plugin, DTYPE_CHOICES),
                ("--context_fmha", self.context_fmha, SWITCH_CHOICES),
                ("--paged_kv_cache", self.paged_kv_cache, SWITCH_CHOICES),
                ("--remove_input_padding", self.remove_input_padding, SWITCH_CHOICES)):
            if value not in choices:
                expected = "enable or disable" if choices is SWITCH_CHOICES else f"one of {', '.join(choices)}"
                raise TrtGptError(f"{flag} is '{value}', expected {expected}")
            if value == "disable" and flag in ALWAYS_ON:
                raise TrtGptError(f"{flag} disable is not available: {ALWAYS_ON[flag]}")
            if choices is DTYPE_CHOICES and value not in ("auto", "disable") and value != engine_dtype:
                raise TrtGptError(f"{flag} is {value} but the checkpoint's dtype is {engine_dtype}: trt-gpt runs an "
                                  f"engine in one dtype (use auto, or convert with --dtype {value})")
        if self.lora_plugin != "disable":
            from ..support import adapter_kinds

            if "lora" not in adapter_kinds():
                raise TrtGptError(f"--lora_plugin {self.lora_plugin}: no installed plugin adds LoRA to an engine")
        return self.context_fmha == "enable"
