"""The HF directory reader: single safetensors, a sharded safetensors index, and pytorch_model.bin
(loaded weights-only) all convert to the same engine, equal to HF."""
from __future__ import annotations

import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.testing import assert_parity, engine_from_checkpoint, random_prompts, save_tiny

CFG = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=151, n_positions=64, initializer_range=0.2)


def test_sharded_index_and_bin_equal_hf(tmp_path):
    hf = save_tiny(GPT2LMHeadModel, CFG, tmp_path / "single")
    hf.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    prompts = random_prompts(151, [7, 20])
    for layout in ("sharded", "bin"):
        engine = engine_from_checkpoint(tmp_path / layout, tmp_path / f"w-{layout}", max_input_len=32)
        assert_parity(hf, engine, prompts, n_greedy=8)
