"""SantaCoder: the original remote-code layout (q_attn/kv_attn, Conv1D or Linear) and the GPTBigCode export
convert to the same checkpoint, and the result equals HF GPTBigCode (multi_query) through the runtime.

The original modeling code is not in transformers, so the fixture re-saves a GPTBigCode MQA model's weights
under the original names with a config.json in the original form.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM
from typer.testing import CliRunner

from trt_gpt.cli.main import make_app
from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError
from trt_gpt.testing import assert_parity, engine_from_checkpoint, random_prompts, save_tiny

VOCAB, N_EMBD, N_LAYER = 229, 64, 2
BASE = dict(n_layer=N_LAYER, n_embd=N_EMBD, n_head=4, vocab_size=VOCAB, n_positions=128, initializer_range=0.2,
            bos_token_id=None, eos_token_id=None, multi_query=True, activation_function="gelu_fast")


def save_original(hf: GPTBigCodeForCausalLM, path: Path, conv1d: bool) -> Path:
    """`hf`'s weights in the original SantaCoder export: c_attn split into q_attn (n_embd rows) and kv_attn
    ([k | v] rows); linears transposed to Conv1D's [in, out] when `conv1d`; GPT-2's mask buffers included."""
    sd: dict[str, torch.Tensor] = {}
    orient = (lambda w: w.t()) if conv1d else (lambda w: w)
    for k, v in hf.state_dict().items():
        m = re.fullmatch(r"(transformer\.h\.\d+\.attn\.)c_attn\.(weight|bias)", k)
        if k == "lm_head.weight":
            continue  # tied: the original export stores it once, as wte
        if m:
            q, kv = v[:N_EMBD], v[N_EMBD:]
            sd[f"{m[1]}q_attn.{m[2]}"] = orient(q) if m[2] == "weight" else q
            sd[f"{m[1]}kv_attn.{m[2]}"] = orient(kv) if m[2] == "weight" else kv
        elif v.dim() == 2 and re.search(r"\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$", k):
            sd[k] = orient(v)
        else:
            sd[k] = v
    for i in range(N_LAYER):
        sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128, dtype=torch.uint8))
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    c = hf.config
    (path / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadCustomModel"], "model_type": "gpt2", "attention_head_type": "multiquery",
        "auto_map": {"AutoModelForCausalLM": "modeling_gpt2_mq.GPT2LMHeadCustomModel"},
        "vocab_size": c.vocab_size, "n_embd": c.n_embd, "n_head": c.n_head, "n_layer": c.n_layer,
        "n_positions": c.n_positions, "n_inner": None, "activation_function": "gelu_fast",
        "layer_norm_epsilon": c.layer_norm_epsilon, "scale_attn_weights": True}))
    return path


@pytest.fixture
def hf(tmp_path) -> GPTBigCodeForCausalLM:
    return save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(**BASE), tmp_path / "bigcode")


def test_original_layout_auto_detected_matches_hf(tmp_path, hf):
    save_original(hf, tmp_path / "orig", conv1d=False)
    engine = engine_from_checkpoint(tmp_path / "orig", tmp_path, variant=None)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["variant"] == "santacoder"
    assert_parity(hf, engine, random_prompts(VOCAB, [5, 17, 33, 1]), n_greedy=32)


def test_all_layouts_convert_to_the_same_checkpoint(tmp_path, hf):
    """Original Linear, original Conv1D and the GPTBigCode export (given --variant santacoder): one result,
    so all share the parity shown above."""
    layouts = {"linear": save_original(hf, tmp_path / "linear", conv1d=False),
               "conv1d": save_original(hf, tmp_path / "conv1d", conv1d=True),
               "bigcode": tmp_path / "bigcode"}
    ckpts = {}
    for name, src in layouts.items():
        res = convert(src, tmp_path / f"ckpt_{name}", dtype="float32", variant="santacoder")
        assert res.variant == "santacoder" and res.config.attention_kind == "MQA"
        ckpts[name] = load_file(str(tmp_path / f"ckpt_{name}" / "rank0.safetensors"))
    ref = ckpts.pop("bigcode")
    for name, got in ckpts.items():
        assert got.keys() == ref.keys(), name
        for k in ref:
            assert torch.equal(got[k], ref[k]), f"{name}: {k}"


@pytest.mark.parametrize("layout,variant,hint", [
    ("mha_bigcode", "santacoder", "starcoder"),  # SantaCoder is multi-query only
    ("orig", "gpt2", "santacoder"),              # says model_type gpt2, but is not GPT-2
    ("orig", "starcoder", "santacoder"),
])
def test_wrong_variant_is_a_clear_error(tmp_path, hf, layout, variant, hint):
    if layout == "orig":
        src = save_original(hf, tmp_path / "orig", conv1d=True)
    else:
        src = tmp_path / "mha"
        save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(**{**BASE, "multi_query": False}), src)
    with pytest.raises(TrtGptError, match=rf"does not fit variant '{variant}'; it looks like '{hint}'"):
        convert(src, tmp_path / "out", dtype="float32", variant=variant)
    assert not (tmp_path / "out").exists()


def test_multihead_original_export_is_refused(tmp_path, hf):
    src = save_original(hf, tmp_path / "orig", conv1d=True)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "attention_head_type": "multihead"}))
    with pytest.raises(TrtGptError, match=r"config\.json: field 'attention_head_type' is 'multihead'"):
        convert(src, tmp_path / "out", dtype="float32")


def test_listed_with_features_and_package():
    r = CliRunner().invoke(make_app(), ["variants", "list", "--json"])
    assert r.exit_code == 0, r.output
    row = next(v for v in json.loads(r.stdout) if v["name"] == "santacoder")
    assert {"MQA", "learned positions"} <= set(row["features"])
    assert row["package"] == "trt-gpt-santacoder" and row["version"] == "0.1.0"
    assert "GPT2LMHeadCustomModel" in row["architectures"]
