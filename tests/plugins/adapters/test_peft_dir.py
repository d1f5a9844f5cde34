"""Reading an HF PEFT adapter directory, shared by the PEFT LoRA and prompt-tuning formats:
adapter_config.json checked for its peft_type, weights from adapter_model.safetensors or adapter_model.bin
(weights-only: pickled objects refused), every failure one line naming the file."""
from __future__ import annotations

import collections
import json

import pytest
import torch
from safetensors.torch import save_file

from trt_gpt.errors import TrtGptError
from trt_gpt_plugins.adapters.peft_dir import read_peft_config, read_peft_weights


def _one_line(fn, match):
    with pytest.raises(TrtGptError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_config(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    cfg_file, pc = read_peft_config(tmp_path, "LORA")
    assert cfg_file == tmp_path / "adapter_config.json" and pc == {"peft_type": "LORA", "r": 4}
    _one_line(lambda: read_peft_config(tmp_path, "PROMPT_TUNING", why="(not a table)"),
              r"adapter_config.json: field 'peft_type' is 'LORA', expected 'PROMPT_TUNING' \(not a table\)$")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    assert read_peft_config(tmp_path, "LORA", default="LORA")[1] == {"r": 4}     # PEFT's default type
    _one_line(lambda: read_peft_config(tmp_path, "PROMPT_TUNING"), "field 'peft_type' is None")
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    _one_line(lambda: read_peft_config(tmp_path, "LORA"), "adapter_config.json: expected a JSON object")
    (tmp_path / "adapter_config.json").write_text("{broken")
    _one_line(lambda: read_peft_config(tmp_path, "LORA"), "adapter_config.json: not valid JSON")
    _one_line(lambda: read_peft_config(tmp_path / "none", "LORA"), "adapter_config.json: file not found")


def test_weights_safetensors_and_bin(tmp_path):
    want = {"x.lora_A.weight": torch.randn(2, 3), "x.lora_B.weight": torch.randn(3, 2)}
    (tmp_path / "st").mkdir()
    save_file(want, str(tmp_path / "st" / "adapter_model.safetensors"))
    (tmp_path / "bin").mkdir()
    torch.save(want, str(tmp_path / "bin" / "adapter_model.bin"))
    for d, name in (("st", "adapter_model.safetensors"), ("bin", "adapter_model.bin")):
        f, got = read_peft_weights(tmp_path / d)
        assert f == tmp_path / d / name
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_weights_refusals(tmp_path):
    _one_line(lambda: read_peft_weights(tmp_path), "no adapter_model.safetensors or adapter_model.bin")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 4)
    _one_line(lambda: read_peft_weights(tmp_path), "adapter_model.safetensors: not a readable adapter weights file")
    (tmp_path / "adapter_model.safetensors").unlink()
    torch.save({"a": collections.Counter("ab")}, str(tmp_path / "adapter_model.bin"))   # a pickled object
    _one_line(lambda: read_peft_weights(tmp_path), "adapter_model.bin: not a readable adapter weights file")
    torch.save([torch.zeros(1)], str(tmp_path / "adapter_model.bin"))
    _one_line(lambda: read_peft_weights(tmp_path), "adapter_model.bin: .*not a dict of tensors")
