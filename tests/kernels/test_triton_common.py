"""The programmatic-dependent-launch policy of `triton_common.use_pdl`, decided on the host (no GPU needed)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from trt_gpt.kernels import triton_common  # noqa: E402
from trt_gpt.kernels.triton_common import PDL_AFTER_WAIT, use_pdl  # noqa: E402


@pytest.mark.parametrize("setting,mode", [("1", PDL_AFTER_WAIT), (None, PDL_AFTER_WAIT), ("0", 0)])
def test_pdl_mode_follows_the_setting(monkeypatch, setting, mode):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton_common, "_pdl_supported", lambda index: True)
    if setting is None:
        monkeypatch.delenv("TRT_GPT_PDL", raising=False)
    else:
        monkeypatch.setenv("TRT_GPT_PDL", setting)
    dev = torch.device("cuda", 0)
    assert use_pdl(dev) == mode
    assert triton_common.pdl_launch(dev) == ({"launch_pdl": True} if mode else {})


@pytest.mark.parametrize("setting", ["early", "early-small", "2", "of"])
def test_a_bad_setting_is_an_error(monkeypatch, setting):
    from trt_gpt.errors import TrtGptError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton_common, "_pdl_supported", lambda index: True)
    monkeypatch.setenv("TRT_GPT_PDL", setting)
    with pytest.raises(TrtGptError, match=f"TRT_GPT_PDL='{setting}': expected 0 or 1"):
        use_pdl(torch.device("cuda", 0))


def test_no_pdl_without_a_capable_gpu_or_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRT_GPT_PDL", "1")
    assert use_pdl(torch.device("cpu")) == 0
    monkeypatch.setattr(triton_common, "_pdl_supported", lambda index: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert use_pdl(torch.device("cuda", 0)) == 0
    monkeypatch.setattr(triton_common, "_pdl_supported", lambda index: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_pdl(torch.device("cuda", 0)) == 0
