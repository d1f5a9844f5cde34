"""benchmarks/weight_only.py without a GPU: every config its defaults and sweep would time is one the kernels
accept for that shape (a sweep must not spend GPU time on configs that raise), and the tuned table it
writes reads back through TRT_GPT_WO_CONFIGS' parser."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel modules define their @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from trt_gpt.kernels.triton_weight_only import _check_config  # noqa: E402
from trt_gpt.kernels.weight_only_configs import heuristic_config, parse_wo_configs  # noqa: E402

def test_every_default_and_swept_config_is_accepted(bench_script):
    mod = bench_script("weight_only")
    checked = 0
    for shapes in mod.MODELS.values():
        for n, k in shapes.values():
            w = torch.empty(n, k, dtype=torch.int8, device="meta")
            for fmt, (bits, group) in mod.FORMATS.items():
                for m in (1, 16, 64, 256):
                    cfgs = [heuristic_config(m, n, k, bits, group)]
                    if m <= 16:
                        cfgs += mod.gemv_candidates(m, k, bits, group)
                    if m >= 16:
                        cfgs += mod.gemm_candidates(m, n, k, bits, group)
                    for base in list(cfgs):
                        cfgs += mod.neighbours(base, k, bits, group)
                    for cfg in cfgs:
                        _check_config(cfg, m, k, w[:, : k // 2] if bits == 4 else w, bits, group)
                        checked += 1
    assert checked > 1000


def test_tuned_table_reads_back(bench_script):
    mod = bench_script("weight_only")
    rows = [dict(model="m", layer="qkv", format="int4g128", M=1, N=5632, K=4608, best_config="gemv:16x128w4s2-fold",
                 fp16_us=20.0, best_us=8.0),
            dict(model="m", layer="fc", format="int8", M=64, N=18432, K=4608, best_config="gemm:64x128x64w4s3k2",
                 fp16_us=50.0, best_us=40.0)]
    table = mod.tuned_table(rows)
    assert parse_wo_configs(mod.dump_wo_configs(table), "t.json") == table
    assert table[("int4g128", 1, 5632, 4608)].cvt == "fold"
    sums = {(s["format"], s["M"]): s["speedup"] for s in mod.summaries(rows)}
    assert sums == {("int4g128", 1): 2.5, ("int8", 64): 1.25}
