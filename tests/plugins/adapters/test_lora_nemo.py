"""NeMo LoRA archives through the engine against HF PEFT: a Llama-shaped NeMo GPT (GQA, GLU) with a NeMo
LoRA on attn_qkv, attn_dense, fc1 and fc2 written from a PEFT adapter's matrices (NeMo's grouped QKV rows,
fc1 as [activated; up]); the engine's logits equal PeftModel's on the HF model."""
from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("peft")
pytest.importorskip("trt_gpt_gpt_next")
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "variants" / "gpt_next" / "tests"))

from nemo_writer import from_llama, group_qkv, perturb_norms, write_nemo  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from trt_gpt import LLM, SamplingParams  # noqa: E402
from trt_gpt.errors import TrtGptError  # noqa: E402
from trt_gpt.lora.testing import make_peft_adapter, peft_greedy, peft_logits, peft_model  # noqa: E402
from trt_gpt.testing import engine_from_checkpoint, random_prompts  # noqa: E402

VOCAB, R, ALPHA = 256, 2, 4.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _block(*bs: torch.Tensor) -> torch.Tensor:
    """[[b0, 0, ...], [0, b1, ...], ...]: separate adapters sharing a NeMo linear_out."""
    return torch.block_diag(*bs)


def write_nemo_lora(path: Path, peft_dir: Path, layers: int, groups: int) -> Path:
    sd = load_file(str(peft_dir / "adapter_model.safetensors"))
    s = ALPHA / R

    def ab(layer: int, mod: str) -> tuple[torch.Tensor, torch.Tensor]:
        p = f"base_model.model.model.layers.{layer}.{'self_attn' if mod[0] in 'qkvo' else 'mlp'}.{mod}"
        return sd[f"{p}.lora_A.weight"], sd[f"{p}.lora_B.weight"] * s

    state = {}
    for i in range(layers):
        (aq, bq), (ak, bk), (av, bv) = ab(i, "q_proj"), ab(i, "k_proj"), ab(i, "v_proj")
        full = _block(bq, bk, bv)
        q, k, v = full.split([bq.shape[0], bk.shape[0], bv.shape[0]])
        pre = f"model.decoder.layers.{i}."
        ad = "adapter_layer.lora_"
        state[pre + f"self_attention.{ad}kqv_adapter.linear_in.weight"] = torch.cat([aq, ak, av])
        state[pre + f"self_attention.{ad}kqv_adapter.linear_out.weight"] = group_qkv(q, k, v, groups)
        ao, bo = ab(i, "o_proj")
        state[pre + f"self_attention.{ad}dense_attention_adapter.linear_in.weight"] = ao
        state[pre + f"self_attention.{ad}dense_attention_adapter.linear_out.weight"] = bo
        (ag, bg), (au, bu) = ab(i, "gate_proj"), ab(i, "up_proj")
        state[pre + f"mlp.{ad}hto4h_adapter.linear_in.weight"] = torch.cat([ag, au])
        state[pre + f"mlp.{ad}hto4h_adapter.linear_out.weight"] = _block(bg, bu)
        ad_, bd = ab(i, "down_proj")
        state[pre + f"mlp.{ad}4htoh_adapter.linear_in.weight"] = ad_
        state[pre + f"mlp.{ad}4htoh_adapter.linear_out.weight"] = bd
    cfg = {"peft": {"peft_scheme": "lora", "lora_tuning": {"adapter_dim": 2 * R}}, "tensor_model_parallel_size": 1}
    with tarfile.open(path, "w:") as tar:
        for name, data in (("model_config.yaml", yaml.safe_dump(cfg).encode()), ("model_weights.ckpt", None)):
            if data is None:
                buf = io.BytesIO()
                torch.save({k: v.contiguous() for k, v in state.items()}, buf)
                data = buf.getvalue()
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("nemo_lora")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=5000.0, max_position_embeddings=256, tie_word_embeddings=True,
        initializer_range=0.1, bos_token_id=0, eos_token_id=0)).eval()
    perturb_norms(hf)
    hf.save_pretrained(str(d / "hf"))
    peft_dir = make_peft_adapter(d / "hf", d / "peft", r=R, lora_alpha=ALPHA, target_modules=TARGETS)
    base = write_nemo(d / "base.nemo", from_llama(hf), "mcore")
    lora = write_nemo_lora(d / "lora.nemo", peft_dir, 2, 2)
    engine = engine_from_checkpoint(base, d, max_batch_size=4, lora_dirs=[lora], lora_ckpt_source="nemo")
    return d, peft_model(d / "hf", peft_dir), engine, lora


def test_nemo_lora_matches_peft(setup):
    _, ref, engine, _ = setup
    llm = LLM(engine, device="cpu")
    prompts = random_prompts(VOCAB, [6, 13], seed=3)
    base = peft_model(setup[0] / "hf", None)
    for p, got in zip(prompts, llm.score(prompts, lora=0)):
        assert (peft_logits(ref, p) - got).abs().max().item() <= 1e-4
        assert (peft_logits(base, p) - got).abs().max().item() > 1e-2   # the adapter is really applied
    outs = llm.generate(prompts, [SamplingParams(max_tokens=5, lora=0), SamplingParams(max_tokens=5)])
    assert outs[0].token_ids == peft_greedy(ref, prompts[0], 5)
    assert outs[1].token_ids == peft_greedy(base, prompts[1], 5)


def test_nemo_lora_at_run_time_and_bad_archive(setup, tmp_path):
    d, _, engine, lora = setup
    llm = LLM(engine, device="cpu")
    llm.add_lora("again", lora, source="nemo")
    bad = tmp_path / "bad.nemo"
    bad.write_bytes(b"not a tar at all")
    with pytest.raises(TrtGptError) as e:
        llm.add_lora("bad", bad, source="nemo")
    assert "\n" not in str(e.value) and "bad.nemo" in str(e.value)
