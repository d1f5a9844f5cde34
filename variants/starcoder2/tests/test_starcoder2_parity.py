"""StarCoder2 through convert -> build -> runtime equals HF transformers, including a sliding window that
prompts and generations run past, plus detection, a wrong --variant and the variants listing."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Starcoder2Config, Starcoder2ForCausalLM

from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError
from trt_gpt.testing import assert_parity, engine_from_checkpoint, hf_greedy, random_prompts, save_tiny

VOCAB = 199
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, bos_token_id=0,
            eos_token_id=0, rope_theta=5000.0)

CONFIGS = {
    "gqa window16 tied bias": dict(sliding_window=16),
    "mqa no-window untied no-bias": dict(num_key_value_heads=1, use_bias=False, tie_word_embeddings=False,
                                         hidden_act="gelu", norm_epsilon=1e-3, rope_theta=10000.0),
}


def tiny_starcoder2(path, **overrides) -> Starcoder2ForCausalLM:
    cfg = Starcoder2Config(**{**BASE, **overrides})
    cfg._attn_implementation = "eager"  # the plain masked-softmax path, so the window is applied visibly
    model = save_tiny(Starcoder2ForCausalLM, cfg, path)
    with torch.no_grad():  # LayerNorms start at (1, 0); perturb them so a swapped norm cannot go unseen
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(str(path))
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_starcoder2_matches_hf(tmp_path, name):
    hf = tiny_starcoder2(tmp_path / "hf", **CONFIGS[name])
    engine = engine_from_checkpoint(tmp_path / "hf", tmp_path)
    # prompts and prompt + generation longer than the window (16), so keys leave it while decoding
    assert_parity(hf, engine, random_prompts(VOCAB, [40, 17, 5]), n_greedy=32)


def test_hf_oracle_applies_the_window(tmp_path):
    """The parity above only proves window handling if HF's own output depends on the window."""
    hf = tiny_starcoder2(tmp_path / "hf", sliding_window=16)
    prompts = random_prompts(VOCAB, [40, 17])
    ids = torch.tensor(prompts[:1])
    with torch.no_grad():
        windowed = hf(ids).logits
        greedy = [hf_greedy(hf, p, 32) for p in prompts]
        hf.config.sliding_window = 17
        wider = hf(ids).logits
        hf.config.sliding_window = None
        unwindowed = [hf_greedy(hf, p, 32) for p in prompts]
    assert torch.allclose(windowed[:, :16], wider[:, :16], atol=1e-5)   # inside both windows: identical
    assert (windowed[:, 17:] - wider[:, 17:]).abs().max() > 1e-3        # past it: the window matters
    assert greedy[0] != unwindowed[0] and greedy[1] != unwindowed[1]    # in decoding too


def test_config_translation_and_detection(tmp_path):
    tiny_starcoder2(tmp_path / "hf", sliding_window=16, use_bias=False)
    res = convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32")
    assert res.variant == "starcoder2"
    c = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert (c["sliding_window"], c["rotary_base"], c["position_embedding_type"], c["num_key_value_heads"],
            c["bias"], c["hidden_act"], c["norm_type"]) == (16, 5000.0, "rope_gpt_neox", 2, False,
                                                            "gelu_pytorch_tanh", "layernorm")


def test_wrong_variant_is_a_clear_error(tmp_path):
    tiny_starcoder2(tmp_path / "sc2")
    with pytest.raises(TrtGptError, match="does not fit variant 'gpt2'.*looks like 'starcoder2'"):
        convert(tmp_path / "sc2", tmp_path / "out", variant="gpt2")
    save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50), tmp_path / "gpt2")
    with pytest.raises(TrtGptError, match="does not fit variant 'starcoder2'"):
        convert(tmp_path / "gpt2", tmp_path / "out", variant="starcoder2")


def test_variants_list_shows_starcoder2(capsys):
    from trt_gpt.cli.listing import variants_list

    variants_list(as_json=True)
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "starcoder2")
    assert row["package"] == "trt-gpt-starcoder2"
    assert {"GQA", "sliding window"} <= set(row["features"])
