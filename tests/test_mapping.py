"""Mapping: rank layout, pipeline layer ranges, and parallel sizes that do not divide the model are a
clear error at convert time, before anything is written."""
from __future__ import annotations

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError
from trt_gpt.mapping import Mapping
from trt_gpt.testing import assert_one_line_error, run_cli, save_tiny


def test_rank_layout_and_layer_ranges():
    m = Mapping(tp_size=2, pp_size=3, rank=5)
    assert (m.world_size, m.tp_rank, m.pp_rank, m.is_last_pp_rank) == (6, 1, 2, True)
    ranges = [Mapping(tp_size=1, pp_size=3, rank=r).layer_range(7) for r in range(3)]
    assert [list(r) for r in ranges] == [[0, 1, 2], [3, 4], [5, 6]]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m") / "hf"
    save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=48, n_head=4, n_inner=102, vocab_size=101,
                                          n_positions=32), d)
    return d


@pytest.mark.parametrize("kw, needle", [
    (dict(tp_size=3), "num_attention_heads"),
    (dict(tp_size=8), "num_attention_heads"),
    (dict(tp_size=4), "intermediate_size"),          # 4 heads split, but n_inner 102 does not
    (dict(pp_size=3), "num_hidden_layers"),
    # (a tied table split by hidden size is no longer refused: tests/distributed/test_parallel_parity.py)
])
def test_parallel_sizes_that_do_not_divide_the_model(hf_dir, tmp_path, kw, needle):
    with pytest.raises(TrtGptError, match=needle):
        convert(hf_dir, tmp_path / "out", dtype="float32", **kw)
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_tp_size_in_one_line(hf_dir, tmp_path):
    proc = run_cli("convert", "--model_dir", hf_dir, "--output_dir", tmp_path / "out", "--tp_size", "3",
                   check=False)
    assert_one_line_error(proc, "tp_size 3", "num_attention_heads")
    assert not (tmp_path / "out").exists()
