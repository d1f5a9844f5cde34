"""The reference's trtllm-build plugin switches: accepted values, the engine-dtype check, and refusals of
`disable` where trt-gpt has one way of doing the job, each one line naming the flag."""
from __future__ import annotations

import pytest

from trt_gpt.cli.build_switches import ALWAYS_ON, BuildSwitches
from trt_gpt.errors import TrtGptError


def test_accepted_values():
    assert BuildSwitches().check("float16") is True
    assert BuildSwitches(gemm_plugin="float16", gpt_attention_plugin="auto", context_fmha="disable").check(
        "float16") is False


@pytest.mark.parametrize("fields,needles", [
    ({"gemm_plugin": "int8"}, ("--gemm_plugin is 'int8', expected one of auto, float16, bfloat16, float32, "
                               "disable",)),
    ({"gemm_plugin": "float32"}, ("--gemm_plugin is float32 but the checkpoint's dtype is float16",
                                  "--dtype float32")),
    ({"gpt_attention_plugin": "disable"}, ("--gpt_attention_plugin disable is not available",
                                           ALWAYS_ON["--gpt_attention_plugin"])),
    ({"context_fmha": "maybe"}, ("--context_fmha is 'maybe', expected enable or disable",)),
    ({"paged_kv_cache": "disable"}, ("--paged_kv_cache disable is not available", ALWAYS_ON["--paged_kv_cache"])),
    ({"remove_input_padding": "on"}, ("--remove_input_padding is 'on', expected enable or disable",)),
    # the dtype switches are checked before the enable/disable ones
    ({"lora_plugin": "x", "context_fmha": "y"}, ("--lora_plugin is 'x'",)),
])
def test_refusals_are_one_line(fields, needles):
    with pytest.raises(TrtGptError) as e:
        BuildSwitches(**fields).check("float16")
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
