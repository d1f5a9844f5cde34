"""`trt-gpt summarize` as a user types it: engine and HF give the same summaries and ROUGE on real CNN
articles with the real GPT-2 tokenizer; perplexity (eval_context_ppl) of both equals one computed
here from HF logits; bad data set lines and failed accuracy checks are one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer
from transformers import AutoTokenizer

from trt_gpt.errors import TrtGptError
from trt_gpt.eval import perplexity, read_jsonl, rouge
from trt_gpt.testing import assert_one_line_error, engine_from_checkpoint, run_cli

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cnn_stories.jsonl"
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"{DATA} not present")
MAX_IN, N_ART = 96, 3


@pytest.fixture(scope="module")
def setup(gpt2_dir, tmp_path_factory):
    hf_dir, hf = gpt2_dir
    engine = engine_from_checkpoint(hf_dir, tmp_path_factory.mktemp("summ"), max_input_len=128, max_batch_size=4)
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    return engine, hf_dir, hf, tok


def _inputs(tok, task: str) -> tuple[list[list[int]], list[str]]:
    recs = [json.loads(line) for line in DATA.read_text().splitlines()[:N_ART]]
    suffix = " TL;DR: " if task == "summarize" else ""
    ids = [tok.encode((r["article"] + suffix).strip().replace(" n't", "n't"))[:MAX_IN] for r in recs]
    return ids, [r["highlights"] for r in recs]


def _summarize(setup, *extra, check=True):
    engine, hf_dir, _, _ = setup
    return run_cli("summarize", "--engine_dir", engine, "--hf_model_dir", hf_dir, "--test_trt_llm", "--test_hf",
                   "--dataset", DATA, "--max_ite", str(N_ART), "--batch_size", "1", "--max_input_length",
                   str(MAX_IN), "--json", *extra, check=check)


@needs_data
def test_engine_and_hf_same_summaries_and_rouge(setup):
    engine, hf_dir, hf, tok = setup
    proc = _summarize(setup, "--output_len", "16", "--check_accuracy", "--rouge1_threshold", "0")
    res = json.loads(proc.stdout)
    ids, refs = _inputs(tok, "summarize")
    hf_outs = []
    for i in ids:
        t = torch.tensor([i])
        with torch.no_grad():
            out = hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=16, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)[0, len(i):].tolist()
        hf_outs.append(out[:out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out)
    assert res["engine"]["outputs"] == res["hf"]["outputs"] == hf_outs
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    texts = [tok.decode(o, skip_special_tokens=True).strip() for o in hf_outs]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        ref = 100 * sum(scorer.score(r, t)[key].fmeasure for r, t in zip(refs, texts)) / len(texts)
        assert res["engine"][key] == res["hf"][key] == pytest.approx(ref, abs=1e-9)
    assert res["engine"]["tokens"] == sum(map(len, hf_outs)) and res["engine"]["tokens_per_second"] > 0
    assert res["hf"]["latency_ms"] > 0 and res["check_accuracy"] is True
    assert "check_accuracy passed" in proc.stderr


@needs_data
def test_context_perplexity_both_sides_and_failed_check(setup):
    engine, hf_dir, hf, tok = setup
    proc = _summarize(setup, "--eval_task", "eval_context_ppl", "--check_accuracy", "--ppl_threshold", "1",
                      check=False)
    assert_one_line_error(proc, "check_accuracy failed", "perplexity", "--ppl_threshold 1")
    res = json.loads(proc.stdout)
    ids, _ = _inputs(tok, "eval_context_ppl")
    refs = []
    for i in ids:
        with torch.no_grad():
            logits = hf(torch.tensor([i])).logits[0].double()
        refs.append(float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(i[1:])).exp()))
    assert res["engine"]["perplexities"] == pytest.approx(refs, rel=1e-4)
    assert res["hf"]["perplexities"] == pytest.approx(refs, rel=1e-6)
    assert res["check_accuracy"] is False


def test_bad_dataset_line_is_one_line_error(setup, tmp_path):
    engine, hf_dir, _, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"article": "a b c", "highlights": "a"}\n{"article": "unterminated\n')
    proc = run_cli("summarize", "--engine_dir", engine, "--dataset", bad, "--max_ite", "5", check=False)
    assert_one_line_error(proc, "bad.jsonl", "line 2", "JSON")


def test_read_jsonl_errors_and_limit(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"article": "x", "highlights": "y"}\n\n{"article": "x"}\n')
    assert [r["_line"] for r in read_jsonl(p, limit=1)] == [1]
    with pytest.raises(TrtGptError, match=r"line 3: missing field 'highlights'"):
        read_jsonl(p)
    p.write_text('{"article": 3, "highlights": "y"}\n')
    with pytest.raises(TrtGptError, match=r"line 1: field 'article' is int"):
        read_jsonl(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(TrtGptError, match=r"line 1: expected a JSON object"):
        read_jsonl(p)
    with pytest.raises(TrtGptError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_metrics_by_hand():
    # unigrams: P = R = 2/3; bigrams: "the cat" shared of 2 each -> 1/2; LCS "the cat" -> 2/3
    r = rouge(["the cat sat"], ["the cat ran"])
    assert r["rouge1"] == pytest.approx(200 / 3) and r["rouge2"] == pytest.approx(50)
    assert r["rougeL"] == pytest.approx(200 / 3)
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
    # ids 0 -> 1 -> 0: p(1 | .) = 0.5, p(0 | .) = 0.25 -> ppl = (0.5 * 0.25) ** -0.5
    assert perplexity(logits, [0, 1, 0]) == pytest.approx((0.5 * 0.25) ** -0.5)


def test_builtin_sample_data_type_and_window(setup):
    """Without --dataset: the articles shipped in the package (read here from the package data, with HF as the
    oracle); the reference's --data_type fp32 and --max_attention_window_size are accepted."""
    import importlib.resources

    engine, hf_dir, hf, tok = setup
    sample = importlib.resources.files("trt_gpt.eval") / "data" / "cnn_sample.jsonl"
    recs = [json.loads(line) for line in sample.read_text().splitlines()]
    assert len(recs) >= 3 and all(r["article"] and r["highlights"] for r in recs)
    proc = run_cli("summarize", "--engine_dir", engine, "--hf_model_dir", hf_dir, "--max_ite", "2",
                   "--max_input_length", "48", "--output_len", "4", "--data_type", "fp32",
                   "--max_attention_window_size", "4096", "--json")
    res = json.loads(proc.stdout)
    assert res["articles"] == 2 and "CNN articles shipped with trt-gpt" in proc.stderr
    for rec, out in zip(recs, res["engine"]["outputs"]):
        ids = tok.encode((rec["article"] + " TL;DR: ").strip().replace(" n't", "n't"))[:48]
        t = torch.tensor([ids])
        with torch.no_grad():
            ref = hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=4, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        assert out == ref
    assert res["hf"]["outputs"] == res["engine"]["outputs"]
    proc = run_cli("summarize", "--engine_dir", engine, "--data_type", "fp8", check=False)
    assert_one_line_error(proc, "--data_type", "fp8")
