"""The trained `lora-milton` PEFT adapter through the engine: held-out Milton perplexity equal to PEFT's
(and far below the base model's: the adapter is really applied)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

DATA = Path(os.environ.get("TRT_GPT_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))
MODEL = DATA / "models" / "gpt2-shakespeare"
pytestmark = pytest.mark.skipif(not (MODEL / "lora-milton").is_dir(), reason="shared data not present")

WINDOW, WINDOWS = 128, 4


def nll_ppl(logits_list, windows):
    total, count = 0.0, 0
    for logits, ids in zip(logits_list, windows):
        lp = torch.log_softmax(logits.double(), -1)[:-1]
        total -= lp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum().item()
        count += len(ids) - 1
    return math.exp(total / count)


def test_milton_perplexity_matches_peft(tmp_path):
    from tokenizers import Tokenizer

    from trt_gpt import LLM
    from trt_gpt.lora.testing import peft_logits, peft_model
    from trt_gpt.testing import engine_from_checkpoint

    ids = Tokenizer.from_file(str(MODEL / "tokenizer.json")).encode(
        (DATA / "text" / "milton_val.txt").read_text()[:40000]).ids
    windows = [ids[i * WINDOW:(i + 1) * WINDOW] for i in range(WINDOWS)]
    engine = engine_from_checkpoint(MODEL, tmp_path, max_input_len=WINDOW, max_batch_size=4,
                                    lora_dirs=[MODEL / "lora-milton"])
    llm = LLM(engine, device="cpu")
    ours, base = nll_ppl(llm.score(windows, lora=0), windows), nll_ppl(llm.score(windows), windows)
    ref = peft_model(MODEL, MODEL / "lora-milton")
    theirs = nll_ppl([peft_logits(ref, w) for w in windows], windows)
    print(f"milton ppl: base {base:.1f}, adapter {ours:.2f} (PEFT {theirs:.2f})")
    assert abs(ours - theirs) <= 1e-3 * theirs
    assert ours < 0.75 * base

