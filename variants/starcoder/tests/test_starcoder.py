"""StarCoder / GPTBigCode through convert -> build -> runtime equals HF transformers (MQA and MHA), is
auto-detected among the packages that also accept its layout, and refuses another variant's name."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM
from typer.testing import CliRunner

from trt_gpt.cli.main import make_app
from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError
from trt_gpt.hookspecs import hookimpl
from trt_gpt.plugins import get_plugins, reset_plugins
from trt_gpt.sources import open_source
from trt_gpt.testing import assert_parity, engine_from_checkpoint, random_prompts, save_tiny
from trt_gpt.variants import VariantSpec, all_variants, resolve_variant

VOCAB = 223
BASE = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=128, initializer_range=0.2,
            bos_token_id=None, eos_token_id=None)  # no eos: HF would suppress it in greedy runs

# (config overrides, --variant): None is auto-detection, which must pick starcoder although the santacoder
# and granite packages (installed alongside) accept gpt_bigcode checkpoints too.
CONFIGS = {
    "mqa gelu_pytorch_tanh tied auto": ({}, None),
    # MHA c_attn is interleaved per head in HF: a wrong de-interleave breaks parity
    "mha gelu untied n_inner eps": (dict(multi_query=False, activation_function="gelu", tie_word_embeddings=False,
                                         n_inner=80, layer_norm_epsilon=1e-3), "starcoder"),
    "mqa unscaled relu softmax flags": (dict(scale_attn_weights=False, activation_function="relu",
                                             attention_softmax_in_fp32=False, scale_attention_softmax_in_fp32=False),
                                        "gpt_bigcode"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_starcoder_matches_hf(tmp_path, name):
    overrides, variant = CONFIGS[name]
    hf = save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(**{**BASE, **overrides}), tmp_path / "hf")
    engine = engine_from_checkpoint(tmp_path / "hf", tmp_path, variant=variant)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["variant"] == "starcoder"
    assert_parity(hf, engine, random_prompts(VOCAB, [5, 17, 33, 1]), n_greedy=32)


def test_auto_detection_picks_starcoder_whatever_the_plugin_order(tmp_path):
    """santacoder and granite accept gpt_bigcode checkpoints when named; auto-detection must still give one
    answer. A variant accepting everything, registered last (so asked first), must not take it over."""
    class Greedy:
        @hookimpl
        def register_variants(self, register):
            register(VariantSpec(name="greedy", description="accepts anything", detect=lambda src: True,
                                 load_config=lambda src: None, weights=lambda src, cfg: iter(())))

    save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(**BASE), tmp_path / "hf")
    reset_plugins()  # a fresh plugin set whose variant registry is not collected yet
    try:
        get_plugins().pm.register(Greedy(), name="greedy")
        assert [v.name for v in all_variants()][0] == "greedy"
        assert resolve_variant(open_source(tmp_path / "hf"), None).name == "starcoder"
    finally:
        reset_plugins()


def test_other_variant_on_starcoder_checkpoint_is_a_clear_error(tmp_path):
    save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(**BASE), tmp_path / "hf")
    with pytest.raises(TrtGptError, match=r"does not fit variant 'gpt2'; it looks like 'starcoder'"):
        convert(tmp_path / "hf", tmp_path / "out", dtype="float32", variant="gpt2")
    assert not (tmp_path / "out").exists()


def test_cli_wrong_variant_one_line_no_traceback(tmp_path):
    save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(**BASE), tmp_path / "hf")
    out = tmp_path / "out"
    exe = Path(sys.executable).parent / "trt-gpt"
    r = subprocess.run([str(exe), "convert", "--model_dir", str(tmp_path / "hf"), "--output_dir", str(out),
                        "--variant", "gpt2"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "variant 'gpt2'" in lines[0] and "starcoder" in lines[0]
    assert not out.exists()


def test_listed_with_features_and_package():
    r = CliRunner().invoke(make_app(), ["variants", "list", "--json"])
    assert r.exit_code == 0, r.output
    row = next(v for v in json.loads(r.stdout) if v["name"] == "starcoder")
    assert {"MQA", "MHA", "learned positions"} <= set(row["features"])
    assert row["package"] == "trt-gpt-starcoder" and row["version"] == "0.1.0"
    assert "GPTBigCodeForCausalLM" in row["architectures"]
