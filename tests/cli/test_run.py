"""`trt-gpt run` as a user types it: input files (txt/json/csv), every beam printed, CSV output,
streaming, stop words, end id, seeded sampling; outputs checked against HF generate, errors as one
line on stderr."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import AutoTokenizer

from trt_gpt.testing import assert_one_line_error, engine_from_checkpoint, run_cli

PROMPTS = ["Born in north-east France, Soyer trained as a", "The harbour was quiet"]
EOS = 50256


@pytest.fixture(scope="module")
def setup(gpt2_dir, tmp_path_factory):
    hf_dir, hf = gpt2_dir
    engine = engine_from_checkpoint(hf_dir, tmp_path_factory.mktemp("run"), max_input_len=32, max_beam_width=2,
                                    max_batch_size=4)
    return engine, hf, AutoTokenizer.from_pretrained(str(hf_dir))


def _hf(hf, ids, n, **kw):
    t = torch.tensor([ids])
    with torch.no_grad():
        out = hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n, pad_token_id=EOS,
                          eos_token_id=EOS, **kw)
    return [row[len(ids):] for row in out.tolist()]


def _strip(tokens):
    return tokens[:tokens.index(EOS) + 1] if EOS in tokens else tokens


def test_json_input_every_beam_and_csv(setup, tmp_path):
    engine, hf, tok = setup
    ids_prompt = [464, 3290, 318, 257]
    (tmp_path / "in.json").write_text(json.dumps(PROMPTS + [ids_prompt]))
    proc = run_cli("run", "--engine_dir", engine, "--input_file", tmp_path / "in.json", "--max_output_len", "6",
                   "--num_beams", "2", "--output_csv", tmp_path / "out" / "ids.csv")
    lines = proc.stdout.splitlines()
    assert len(lines) == 9
    rows = list(csv.reader((tmp_path / "out" / "ids.csv").read_text().splitlines()))
    assert len(rows) == 6
    for i, p in enumerate(PROMPTS + [ids_prompt]):
        ids = tok.encode(p) if isinstance(p, str) else p
        ref = [_strip(b) for b in _hf(hf, ids, 6, num_beams=2, num_return_sequences=2, do_sample=False)]
        assert lines[3 * i] == f'Input [Text {i}]: "{p if isinstance(p, str) else tok.decode(p)}"'
        for k in range(2):
            assert [int(t) for t in rows[2 * i + k]] == ref[k]
            assert lines[3 * i + 1 + k] == f'Output [Text {i} Beam {k}]: "{tok.decode(ref[k], skip_special_tokens=True)}"'


def test_txt_input_streaming_stop_words_and_penalty(setup, tmp_path):
    engine, hf, tok = setup
    (tmp_path / "in.txt").write_text("\n".join(PROMPTS) + "\n")
    n = 12
    refs = [_hf(hf, tok.encode(p), n, do_sample=False, repetition_penalty=1.3)[0] for p in PROMPTS]
    # A two-token stop word taken from the middle of the first output (it must re-tokenize the same).
    k = next(k for k in range(2, n - 2) if tok.encode(tok.decode(refs[0][k:k + 2])) == refs[0][k:k + 2]
             and refs[0][k:k + 2] not in [refs[0][j:j + 2] for j in range(k)])
    word = tok.decode(refs[0][k:k + 2])
    proc = run_cli("run", "--engine_dir", engine, "--input_file", tmp_path / "in.txt", "--max_output_len", str(n),
                   "--streaming", "--repetition_penalty", "1.3", "--stop_words", word, "never seen words")
    lines = proc.stdout.splitlines()
    first = [line for line in lines if line.startswith("Output [Text 0 Beam 0]")]
    assert len(first) == k + 2          # one line per new token, the last one ends with the stop word
    for j, line in enumerate(first):
        assert line == f'Output [Text 0 Beam 0]: "{tok.decode(refs[0][:j + 1])}"'
    last1 = [line for line in lines if line.startswith("Output [Text 1 Beam 0]")][-1]
    ref1 = refs[1]
    stop = tok.encode(word)
    cut = next((j + 2 for j in range(len(ref1) - 1) if ref1[j:j + 2] == stop), len(ref1))
    assert last1 == f'Output [Text 1 Beam 0]: "{tok.decode(_strip(ref1[:cut]), skip_special_tokens=True)}"'


def test_csv_ids_end_id_and_seeded_sampling(setup, tmp_path):
    engine, hf, tok = setup
    ids = [tok.encode(p) for p in PROMPTS]
    (tmp_path / "in.csv").write_text("\n".join(",".join(map(str, r)) for r in ids) + "\n")
    greedy = _hf(hf, ids[0], 8, do_sample=False)[0]
    end = greedy[3]
    args = ["run", "--engine_dir", engine, "--input_file", tmp_path / "in.csv", "--max_output_len", "8",
            "--kv_cache_free_gpu_memory_fraction", "0.5", "--max_attention_window_size", "4096", "--json"]
    out = json.loads(run_cli(*args, "--end_id", str(end)).stdout)
    assert out[0]["output_ids"] == greedy[:greedy.index(end) + 1] and out[0]["finish_reason"] == "end_id"
    sampled = json.loads(run_cli(*args, "--top_k", "0", "--top_p", "0.9", "--temperature", "1.5",
                                 "--random_seed", "5").stdout)
    for r, p in zip(sampled, ids):
        torch.manual_seed(5)    # our per-request generator draws exactly as HF's global one does
        ref = _strip(_hf(hf, p, 8, do_sample=True, top_k=None, top_p=0.9, temperature=1.5)[0])
        assert r["output_ids"] == ref and r["input_ids"] == p


def test_errors_are_one_line(setup, tmp_path):
    engine, hf, tok = setup
    (tmp_path / "bad.json").write_text('{"prompt": 1}')
    assert_one_line_error(run_cli("run", "--engine_dir", engine, "--input_file", tmp_path / "bad.json",
                                  "--max_output_len", "2", check=False), "bad.json", "JSON list")
    long = "word" + " word" * 39
    assert len(tok.encode(long)) == 40
    (tmp_path / "long.txt").write_text(long + "\n")
    assert_one_line_error(run_cli("run", "--engine_dir", engine, "--input_file", tmp_path / "long.txt",
                                  "--max_output_len", "2", check=False), "40 tokens", "max_input_len")
    (tmp_path / "ids.json").write_text("[[1, 2, 3]]")
    assert_one_line_error(run_cli("run", "--engine_dir", engine, "--input_file", tmp_path / "ids.json",
                                  "--max_output_len", "2", "--num_beams", "3", check=False), "max_beam_width")
