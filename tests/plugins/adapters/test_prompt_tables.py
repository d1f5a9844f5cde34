"""Prompt-table formats: an HF PEFT prompt-tuning adapter through the engine equals PEFT's own
`PeftModel` (logits at every position, the virtual ones included); the trained `prompt-milton` adapter gives
PEFT's held-out Milton perplexity; a NeMo p-tuning archive (both layouts) reads as the reference's
converter lays it out; bad files are refused in one line naming the file and field."""
from __future__ import annotations

import io
import math
import os
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from trt_gpt import LLM
from trt_gpt.errors import TrtGptError
from trt_gpt.runtime.prompt_pool import load_prompt_table
from trt_gpt.testing import engine_from_checkpoint, save_tiny

peft = pytest.importorskip("peft")

DATA = Path(os.environ.get("TRT_GPT_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))
MILTON = DATA / "models" / "gpt2-shakespeare"
VOCAB = 97


def tiny_gpt2(path):
    from transformers import GPT2Config, GPT2LMHeadModel

    return save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64,
                                                 initializer_range=0.2), path)


def peft_prompt_dir(base, path, n=6, seed=3):
    model = peft.get_peft_model(base, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n))
    with torch.no_grad():
        emb = model.prompt_encoder["default"].embedding.weight
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    model.save_pretrained(str(path))
    return model


def test_peft_prompt_tuning_matches_peft_model(tmp_path):
    from transformers import GPT2LMHeadModel

    tiny_gpt2(tmp_path / "hf")
    peft_prompt_dir(GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")), tmp_path / "pt", n=6)
    ref = peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")), str(tmp_path / "pt"))
    ref.eval()
    engine = engine_from_checkpoint(tmp_path / "hf", tmp_path, max_input_len=32, tokens_per_block=4,
                                    max_prompt_embedding_table_size=8)
    llm = LLM(engine, device="cpu", prompt_tables={"pt": tmp_path / "pt"})
    ids = [5, 60, 7, 33, 90, 2]
    got = llm.score([list(range(VOCAB, VOCAB + 6)) + ids], prompt_table="pt")[0]
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.skipif(not (MILTON / "prompt-milton").is_dir(), reason="shared data not present")
def test_milton_perplexity_matches_peft(tmp_path):
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    window, windows, n = 96, 3, 16
    ids = Tokenizer.from_file(str(MILTON / "tokenizer.json")).encode(
        (DATA / "text" / "milton_val.txt").read_text()[:20000]).ids
    chunks = [ids[i * window:(i + 1) * window] for i in range(windows)]
    engine = engine_from_checkpoint(MILTON, tmp_path, max_input_len=window + n, max_batch_size=4,
                                    max_prompt_embedding_table_size=n)
    llm = LLM(engine, device="cpu", prompt_tables={"milton": MILTON / "prompt-milton"})
    vocab = llm.cfg.vocab_size
    virt = list(range(vocab, vocab + n))
    ref = peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(str(MILTON)), str(MILTON / "prompt-milton"))
    ref.eval()

    def ppl(logit_rows):   # each real token after the first, predicted from the position before it
        total = count = 0
        for lg, c in zip(logit_rows, chunks):
            lp = torch.log_softmax(lg.double(), -1)[-len(c):-1]
            total -= lp.gather(1, torch.tensor(c[1:]).unsqueeze(1)).sum().item()
            count += len(c) - 1
        return math.exp(total / count)

    ours = ppl(llm.score([virt + c for c in chunks], prompt_table="milton"))
    base = ppl(llm.score(chunks))
    with torch.no_grad():
        theirs = ppl([ref(input_ids=torch.tensor([c])).logits[0] for c in chunks])
    print(f"milton ppl: base {base:.1f}, prompt {ours:.2f} (PEFT {theirs:.2f})")
    assert abs(ours - theirs) <= 1e-3 * theirs
    assert ours < 0.95 * base


def write_nemo(path, config, weights):
    buf = io.BytesIO()
    torch.save(weights, buf)
    with tarfile.open(path, "w") as tar:
        for name, data in (("model_config.yaml", yaml.safe_dump(config).encode()), ("model_weights.ckpt",
                                                                                    buf.getvalue())):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def cfg():
    from trt_gpt.config import ModelConfig

    return ModelConfig(architecture="GPTForCausalLM", dtype="float32", vocab_size=VOCAB, hidden_size=32,
                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)


def test_nemo_ptuning_inference_table(tmp_path, cfg):
    pytest.importorskip("trt_gpt_gpt_next")
    t = torch.randn(7, 32)
    write_nemo(tmp_path / "p.nemo", {"peft": {"peft_scheme": "ptuning"}, "hidden_size": 32},
               {"model.embedding.adapter_layer.ptuning_adapter.inference_table": t})
    got = load_prompt_table(tmp_path / "p.nemo", cfg)
    assert got.shape == (1, 7, 32) and torch.equal(got[0], t)


def test_nemo_prompt_learning_tasks_padded(tmp_path, cfg):
    """Per-task tables in task_templates order, the shorter padded with zero rows (the reference's converter)."""
    pytest.importorskip("trt_gpt_gpt_next")
    t1, t2 = torch.randn(3, 32), torch.randn(5, 32)
    write_nemo(tmp_path / "p.nemo", {"task_templates": [{"taskname": "sum"}, {"taskname": "qa"}]},
               {"prompt_table.qa.prompt_embeddings.weight": t2, "prompt_table.sum.prompt_embeddings.weight": t1})
    got = load_prompt_table(tmp_path / "p.nemo", cfg)
    assert got.shape == (2, 5, 32)
    assert torch.equal(got[0, :3], t1) and torch.equal(got[0, 3:], torch.zeros(2, 32)) and torch.equal(got[1], t2)


def test_bad_files(tmp_path, cfg):
    from transformers import GPT2LMHeadModel

    tiny_gpt2(tmp_path / "hf")
    peft_prompt_dir(GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")), tmp_path / "pt")
    cases = []
    # hidden-size mismatch: a table for another base
    other = cfg.__class__(**{**cfg.__dict__, "hidden_size": 48, "num_attention_heads": 2})
    cases.append((lambda: load_prompt_table(tmp_path / "pt", other),
                  "hidden size is 32, the model's hidden_size is 48"))
    cases.append((lambda: load_prompt_table(tmp_path / "pt", cfg, max_rows=4), "6 rows exceeds"))
    # corrupt safetensors
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text((tmp_path / "pt" / "adapter_config.json").read_text())
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(b"\x00" * 20)
    cases.append((lambda: load_prompt_table(tmp_path / "bad", cfg), "adapter_model.safetensors: not a readable"))
    # a LoRA dir is not a prompt table
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    cases.append((lambda: load_prompt_table(tmp_path / "lora", cfg), "not a prompt table"))
    cases.append((lambda: load_prompt_table(tmp_path / "lora", cfg, source="peft"), "'peft_type' is 'LORA'"))
    # a .nemo that is not a tar, and one without any table
    (tmp_path / "x.nemo").write_bytes(b"not a tar")
    cases.append((lambda: load_prompt_table(tmp_path / "x.nemo", cfg), "not a tar archive"))
    write_nemo(tmp_path / "empty.nemo", {"a": 1}, {"model.something.weight": torch.zeros(2)})
    cases.append((lambda: load_prompt_table(tmp_path / "empty.nemo", cfg), "no prompt table in the archive"))
    for fn, msg in cases:
        with pytest.raises(TrtGptError, match=msg) as e:
            fn()
        assert "\n" not in str(e.value)


def test_formats_are_registered_plugins():
    from trt_gpt.runtime.prompt_pool import prompt_table_formats

    assert {f.name for f in prompt_table_formats()} >= {"npy", "peft", "nemo"}
