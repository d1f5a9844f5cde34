"""Calibration: text reading (.txt, .jsonl, the built-in sample) and its errors, token windows, and the
recorded statistics against HF transformers' own layer inputs and outputs (forward hooks on the HF model)."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.mapping import Mapping
from trt_gpt.quant.calibration import (CalibStats, LayerStats, collect_stats, float_model, read_calib_texts,
                                       token_windows)
from trt_gpt.testing import random_prompts, save_tiny


def test_read_txt_jsonl_and_builtin(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\nover lines")
    assert read_calib_texts(tmp_path / "a.txt") == ["plain text\nover lines"]
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"article": "two"}) + "\n")
    assert read_calib_texts(tmp_path / "b.jsonl") == ["one", "two"]
    builtin = read_calib_texts(None)
    assert len(builtin) == 20 and sum(map(len, builtin)) > 50_000


def test_bad_calibration_files(tmp_path):
    with pytest.raises(TrtGptError, match="none.txt: calibration dataset not found"):
        read_calib_texts(tmp_path / "none.txt")
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(TrtGptError, match="e.txt: calibration dataset is empty"):
        read_calib_texts(tmp_path / "e.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(TrtGptError, match=r"bad.jsonl:2: not valid JSON"):
        read_calib_texts(tmp_path / "bad.jsonl")
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(TrtGptError, match=r"nofield.jsonl:1: expected an object with a string 'text' or 'article'"):
        read_calib_texts(tmp_path / "nofield.jsonl")


def test_token_windows():
    enc = lambda s: list(range(len(s)))   # noqa: E731 - one token a character
    assert token_windows(["abcd", "efgh"], enc, 4, 10) == [[0, 1, 2, 3], [4, 5, 6, 7]]   # "abcd\n\nefgh": 10 chars
    assert token_windows(["abcdefgh"], enc, 3, 1) == [[0, 1, 2]]
    with pytest.raises(TrtGptError, match="3 tokens, shorter than one calibration window of 4"):
        token_windows(["abc"], enc, 4, 1)


HF_OF = {"attention.qkv": "attn.c_attn", "attention.dense": "attn.c_proj", "mlp.fc": "mlp.c_fc",
         "mlp.proj": "mlp.c_proj"}


def test_statistics_equal_hf_layer_inputs_and_outputs(tmp_path):
    hf = save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=64,
                                               initializer_range=0.2, bos_token_id=0, eos_token_id=0), tmp_path)
    windows = random_prompts(101, [24] * 5, seed=3)
    stats = collect_stats(float_model(tmp_path, max_positions=64), windows, max_samples=20, batch_windows=2)
    assert stats.tokens == 120 and stats.windows == 5 and len(stats.layers) == 8
    seen: dict[str, list] = {}
    hooks = []
    for i, block in enumerate(hf.transformer.h):
        for ours, theirs in HF_OF.items():
            mod = block.get_submodule(theirs)
            name = f"transformer.layers.{i}.{ours}"
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: seen.setdefault(name, []).append((inp[0][0], out[0]))))
    with torch.no_grad():
        for w in windows:
            hf(torch.tensor([w]))
    for h in hooks:
        h.remove()
    for name, pairs in seen.items():
        x = torch.cat([p[0] for p in pairs])
        y = torch.cat([p[1] for p in pairs])
        st = stats.layers[name]
        torch.testing.assert_close(st.in_absmax, x.abs().amax(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(st.in_absmean, x.abs().mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(st.out_absmax, y.abs().amax(0), atol=1e-5, rtol=1e-5)
        assert st.samples.shape == (20, x.shape[1]) and st.tokens == 120
        # every sampled row is one of the layer's real input rows
        dist = torch.cdist(st.samples, x, compute_mode="donot_use_mm_for_euclid_dist")
        assert dist.amin(1).max() < 1e-4


def test_for_rank_cuts_row_parallel_inputs_and_maps_stage_layers():
    st = LayerStats(torch.arange(8.), torch.arange(8.) + 10, torch.arange(6.), torch.arange(16.).reshape(2, 8), 2)
    stats = CalibStats({"transformer.layers.3.mlp.proj": st, "transformer.layers.3.mlp.fc": st})
    cfg = ModelConfig(num_hidden_layers=4, hidden_size=64, num_attention_heads=4,
                      mapping=Mapping(world_size=4, tp_size=2, pp_size=2).with_rank(3))   # tp rank 1, stage 1
    row = stats.for_rank("transformer.layers.1.mlp.proj", "row", cfg)
    assert row.in_absmax.tolist() == [4., 5., 6., 7.] and row.in_absmean.tolist() == [14., 15., 16., 17.]
    assert row.samples.tolist() == [[4., 5., 6., 7.], [12., 13., 14., 15.]] and row.out_absmax.shape == (6,)
    assert stats.for_rank("transformer.layers.1.mlp.fc", "column", cfg) is st
    with pytest.raises(TrtGptError, match="no entry for 'transformer.layers.2.mlp.fc'"):
        stats.for_rank("transformer.layers.0.mlp.fc", "column", cfg)
