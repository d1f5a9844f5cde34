"""Tile configurations of the fused decode GEMV (`triton_gemv`): the tuned tables (the H100's, and per-GPU
ones), their run-time override (TRT_GPT_GEMV_CONFIGS, a JSON file written by benchmarks/tune_decode.py) and
the fallback heuristic.

Kept apart from the kernel so that the numbers measured on a GPU, and the code that reads a user's file,
change without touching kernel code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config_files import load_env_table, parse_json_table
from .triton_common import next_pow2


@dataclass(frozen=True)
class GemvConfig:
    """Tile sizes; num_stages >= 2 also double-buffers the W tiles by hand (the kernel has no tl.dot for
    Triton's pipeliner to stage), which costs a second tile of registers. `early_release`: under PDL the
    kernel lets the next one launch as it starts rather than after its own wait (see triton_common.use_pdl),
    so the next kernel's weights may stream in for the whole of this one. `prefetch_tiles` (1 or 2): how
    many K tiles of W are loaded before the kernel's `gdc_wait` (2 replaces the hand double-buffering).
    Both are tuned per shape in the decode graph (benchmarks/tune_decode.py)."""
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    early_release: bool = False
    prefetch_tiles: int = 1

    def __post_init__(self):
        if self.prefetch_tiles not in (1, 2):
            raise ValueError(f"GemvConfig: prefetch_tiles must be 1 or 2, got {self.prefetch_tiles}")

    def as_list(self) -> list[int]:
        """The tuned-file form: [block_n, block_k, num_warps, num_stages(, early_release(, prefetch_tiles))],
        trailing defaults left out."""
        if self.prefetch_tiles != 1:
            tail = [int(self.early_release), self.prefetch_tiles]
        else:
            tail = [1] if self.early_release else []
        return [self.block_n, self.block_k, self.num_warps, self.num_stages] + tail


# Best configs keyed by (next_pow2(M), N, K). Shapes not listed fall back to `_heuristic_config`; a GPU-specific
# table can be merged over this one at run time (TRT_GPT_GEMV_CONFIGS, written by benchmarks/tune_decode.py).
# GPT-2 medium and SantaCoder-1B: `benchmarks/tune_decode.py`, which times the whole batch-1 decode CUDA graph
# on an H100 80GB HBM3 (triton 3.6, fp16) and keeps the tile that makes the *step* fastest (kernels overlap
# under PDL, so this is not the tile that is fastest alone). StarCoder2-7B: `benchmarks/gemv.py`'s sweep of
# each GEMV alone (the comment is that kernel's time), num_stages 1 (no hand double-buffering, as measured).
GEMV_CONFIGS: dict[tuple[int, int, int], GemvConfig] = {
    (1, 1024, 1024): GemvConfig(block_n=4, block_k=1024, num_warps=8, num_stages=1),  # gpt2-medium dense
    (1, 1024, 4096): GemvConfig(block_n=2, block_k=4096, num_warps=4, num_stages=1),  # gpt2-medium proj
    (1, 2048, 2048): GemvConfig(block_n=2, block_k=2048, num_warps=4, num_stages=1),  # santacoder dense
    (1, 2048, 8192): GemvConfig(block_n=4, block_k=4096, num_warps=8, num_stages=1),  # santacoder proj
    (1, 2304, 2048): GemvConfig(block_n=32, block_k=512, num_warps=8, num_stages=2),  # santacoder qkv
    (1, 3072, 1024): GemvConfig(block_n=8, block_k=1024, num_warps=4, num_stages=1),  # gpt2-medium qkv
    (1, 4096, 1024): GemvConfig(block_n=32, block_k=512, num_warps=8, num_stages=1),  # gpt2-medium fc
    (1, 4608, 4608): GemvConfig(block_n=4, block_k=512, num_warps=4, num_stages=1),  # starcoder2-7b dense 16.43us
    (1, 4608, 18432): GemvConfig(block_n=2, block_k=1024, num_warps=4, num_stages=1),  # starcoder2-7b proj 58.17us
    (1, 5632, 4608): GemvConfig(block_n=16, block_k=512, num_warps=2, num_stages=1),  # starcoder2-7b qkv 22.45us
    (1, 8192, 2048): GemvConfig(block_n=8, block_k=512, num_warps=4, num_stages=1),  # santacoder fc
    (1, 18432, 4608): GemvConfig(block_n=8, block_k=256, num_warps=4, num_stages=1),  # starcoder2-7b fc 61.54us
    (1, 49152, 4608): GemvConfig(block_n=4, block_k=512, num_warps=4, num_stages=1),  # starcoder2-7b lm_head 151.67us
    (1, 49280, 2048): GemvConfig(block_n=8, block_k=1024, num_warps=4, num_stages=1),  # santacoder lm_head
    (1, 50257, 1024): GemvConfig(block_n=4, block_k=1024, num_warps=4, num_stages=1),  # gpt2-medium lm_head
}


# Per-GPU tables, keyed by a substring of the CUDA device name, consulted before GEMV_CONFIGS (the H100's).
# "H200": tune_decode.py on an NVIDIA H200 (triton 3.6, fp16, batch-1 decode graph; 70 s a model):
# step 0.929 -> 0.901 ms (SantaCoder-1B), 0.449 -> 0.444 ms (GPT-2 medium). Raw trials:
# benchmarks/results/h200/2026-12-02-gemv-tune/. SantaCoder's lm_head was not reached within the budget.
# GPT-2 medium re-tuned on the graph with one-split attention, host picks and staged
# inputs, with the PDL release point and the prefetch depth as tuned dimensions (150 s, two rounds): step
# 0.4216 -> 0.3898 ms; raw trials benchmarks/results/h200/2026-12-02-staged-inputs/tuned3-trials.json.
DEVICE_GEMV_CONFIGS: dict[str, dict[tuple[int, int, int], GemvConfig]] = {
    "H200": {
        (1, 2304, 2048): GemvConfig(block_n=8, block_k=1024, num_warps=4, num_stages=1),   # santacoder qkv
        (1, 2048, 2048): GemvConfig(block_n=4, block_k=1024, num_warps=8, num_stages=1),   # santacoder dense
        (1, 8192, 2048): GemvConfig(block_n=8, block_k=512, num_warps=4, num_stages=1),    # santacoder fc
        (1, 2048, 8192): GemvConfig(block_n=4, block_k=4096, num_warps=8, num_stages=1),   # santacoder proj
        # gpt2-medium: qkv, dense, fc, proj, lm_head
        (1, 3072, 1024): GemvConfig(block_n=8, block_k=1024, num_warps=4, num_stages=1, early_release=True),
        (1, 1024, 1024): GemvConfig(block_n=4, block_k=1024, num_warps=8, num_stages=1, early_release=True),
        (1, 4096, 1024): GemvConfig(block_n=8, block_k=512, num_warps=4, num_stages=1, early_release=True,
                                    prefetch_tiles=2),
        (1, 1024, 4096): GemvConfig(block_n=2, block_k=4096, num_warps=4, num_stages=1),
        (1, 50257, 1024): GemvConfig(block_n=16, block_k=512, num_warps=4, num_stages=1, prefetch_tiles=2),
    },
}

# Entries that win over every built-in table: the TRT_GPT_GEMV_CONFIGS file, and the tuner's trials.
OVERRIDES: dict[tuple[int, int, int], GemvConfig] = {}

CONFIGS_ENV = "TRT_GPT_GEMV_CONFIGS"
_loaded_from: list[str] = []


def parse_gemv_configs(text: str, source: str) -> dict[tuple[int, int, int], GemvConfig]:
    """A tuned table as written by benchmarks/tune_decode.py: {"M,N,K": [block_n, block_k, warps, stages]},
    optionally followed by early_release (0/1) and prefetch_tiles (1/2)."""
    def entry(key: str, val: Any) -> tuple[tuple[int, int, int], GemvConfig]:
        m, n, k = (int(v) for v in key.split(","))
        if not isinstance(val, list) or not 4 <= len(val) <= 6:
            raise ValueError(f"entry {key!r}: four to six integers")
        bn, bk, warps, stages, early, prefetch = [int(v) for v in val] + [0, 1][len(val) - 4:]
        if min(bn, bk, warps, stages) < 1 or bn & (bn - 1) or bk & (bk - 1) or warps & (warps - 1):
            raise ValueError(f"entry {key!r}: block sizes and warps must be powers of two")
        if early not in (0, 1) or prefetch not in (1, 2):
            raise ValueError(f"entry {key!r}: early_release must be 0 or 1 and prefetch_tiles 1 or 2")
        return (next_pow2(m), n, k), GemvConfig(bn, bk, warps, stages, bool(early), prefetch)

    return parse_json_table(text, source, entry, '{"M,N,K": [block_n, block_k, num_warps, num_stages, ...]}')


def load_env_configs() -> None:
    """Merge the table named by TRT_GPT_GEMV_CONFIGS (a GPU-specific tuning) into OVERRIDES, once per path."""
    load_env_table(CONFIGS_ENV, parse_gemv_configs, OVERRIDES, _loaded_from)


def _heuristic_config(m_pad: int, n: int, k: int) -> GemvConfig:
    # Small N has few programs: narrower blocks keep more SMs busy.
    block_n = 2 if n <= 2048 else 4
    # M > 2: shrink the tile to bound the M_PAD * BLOCK_N * BLOCK_K partial sums (about 170 registers at
    # M=8), but keep BLOCK_N * BLOCK_K >= 8 elements per thread (16-byte fp16 loads at 4 warps).
    block_k = 512 if m_pad <= 2 else 1024 // block_n
    # num_stages 1: the hand double-buffered loop lost in every in-graph comparison (tune_decode.py)
    return GemvConfig(block_n=block_n, block_k=min(block_k, next_pow2(k)), num_warps=4, num_stages=1)


def interpreter_config(n: int, k: int) -> GemvConfig:
    """Tiles for CPU tensors (TRITON_INTERPRET=1): the interpreter runs the programs one after another in
    Python, so a few wide programs instead of hundreds of narrow ones (the GPU tiles are tested explicitly
    in tests/kernels/test_triton_gemv.py). Still several programs for a vocabulary-sized N, and several K
    tiles for a wide K, so both loops run."""
    return GemvConfig(block_n=min(32, next_pow2(n)), block_k=min(128, next_pow2(k)), num_warps=4, num_stages=1)


def device_table(device_name: str) -> dict[tuple[int, int, int], GemvConfig]:
    """The built-in table tuned on the GPU whose name contains one of DEVICE_GEMV_CONFIGS' keys ({} if none)."""
    for key, table in DEVICE_GEMV_CONFIGS.items():
        if key in device_name:
            return table
    return {}


def gemv_config(m: int, n: int, k: int, dtype: torch.dtype, device_name: str = "") -> GemvConfig:
    """Tile config for an [m, k] x [n, k]^T GEMV on the GPU named `device_name`: OVERRIDES, then that GPU's
    table, then GEMV_CONFIGS, then the heuristic. dtype is accepted for future per-dtype tables."""
    load_env_configs()
    key = (next_pow2(max(1, m)), n, k)
    for table in (OVERRIDES, device_table(device_name), GEMV_CONFIGS):
        if key in table:
            return table[key]
    return _heuristic_config(*key)
