"""Kernel choice and tile sizes of the weight-only linear layer (`triton_weight_only`): a table of measured
configurations, a run-time override file (TRT_GPT_WO_CONFIGS, written by benchmarks/weight_only.py --sweep),
and the fallback heuristic.

Three kernels compute the same function, and which is fastest depends on M:
  * "gemv"    - weight streaming with fp32 FMAs in registers (no tensor cores): decode steps, M <= 16;
  * "gemm"    - tensor-core tiles (tl.dot) on weights dequantized in registers: prompt steps;
  * "dequant" - dequantize the whole weight to x's dtype, then cuBLAS: a baseline for large M.
The choice is explicit in the config, so a benchmark can time each kernel on each shape.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import triton

from .config_files import load_env_table, parse_json_table
from .triton_common import next_pow2

KERNELS = ("gemv", "gemm", "dequant")
CVTS = ("magic", "i2f", "fold", "fp8")
GEMV_MAX_M = 16          # the GEMV keeps [M_PAD, BLOCK_N, BLOCK_K] fp32 partials in registers
CONFIGS_ENV = "TRT_GPT_WO_CONFIGS"
TARGET_PROGRAMS = 264    # about two programs per SM on an H100/H200 (132 SMs)


@dataclass(frozen=True)
class WoConfig:
    """kernel: one of KERNELS. block_k counts logical input columns (int4: two a byte); block_m applies to
    "gemm" only. split_k > 1 splits K over that many programs per output tile; their fp32 partials are
    summed by a second small kernel. cvt is how integers become floats (see triton_weight_only): "magic"
    (a logic op and a float subtract), "i2f" (conversion instructions), or, for INT4 in the GEMV only,
    "fold" (weights read as 32-bit words, the subtract folded into sums of x)."""
    kernel: str
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1
    block_m: int = 16
    split_k: int = 1
    cvt: str = "magic"

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"WoConfig: kernel must be one of {KERNELS}, got {self.kernel!r}")
        for name in ("block_n", "block_k", "num_warps", "block_m"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"WoConfig: {name} must be a power of two, got {v}")
        if self.split_k < 1 or self.num_stages < 1:
            raise ValueError(f"WoConfig: split_k and num_stages must be >= 1, got {self}")
        if self.cvt not in CVTS:
            raise ValueError(f"WoConfig: cvt must be one of {CVTS}, got {self.cvt!r}")
        if self.cvt == "fp8" and self.kernel == "dequant":
            raise ValueError("WoConfig: cvt 'fp8' (e4m3 weights, kernels/triton_weight_only.fp8_gemv) exists in the "
                             "gemv and gemm kernels only")
        if self.cvt == "fold" and self.kernel == "dequant":
            raise ValueError("WoConfig: cvt 'fold' exists in the gemv and gemm kernels only")
        if self.kernel == "gemm" and min(self.block_m, self.block_n) < 16:
            raise ValueError(f"WoConfig: gemm tiles need block_m, block_n >= 16 (tensor-core shapes), got {self}")

    def short(self) -> str:
        s = f"{self.kernel}:{self.block_n}x{self.block_k}w{self.num_warps}s{self.num_stages}"
        if self.kernel == "gemm":
            s = f"{self.kernel}:{self.block_m}x{self.block_n}x{self.block_k}w{self.num_warps}s{self.num_stages}"
        if self.split_k > 1:
            s += f"k{self.split_k}"
        return s + ("" if self.cvt == "magic" else f"-{self.cvt}")


    @classmethod
    def from_short(cls, text: str) -> "WoConfig":
        """Inverse of `short`: 'gemv:8x512w4s1', 'gemm:64x128x64w4s3k2', 'gemv:16x256w4s1-fold'."""
        m = re.fullmatch(r"(\w+):([\dx]+)w(\d+)s(\d+)(?:k(\d+))?(?:-(\w+))?", text.strip())
        dims = [int(d) for d in m.group(2).split("x")] if m else []
        if not m or len(dims) != (3 if m.group(1) == "gemm" else 2):
            raise ValueError(f"WoConfig: {text!r} is not like 'gemv:8x512w4s1[-fold]' or "
                             f"'gemm:64x128x64w4s3[k2][-i2f]'")
        kw = dict(block_m=dims[0]) if len(dims) == 3 else {}
        return cls(m.group(1), dims[-2], dims[-1], num_warps=int(m.group(3)), num_stages=int(m.group(4)),
                   split_k=int(m.group(5) or 1), cvt=m.group(6) or "magic", **kw)


def format_key(bits: int, group_size: int | None) -> str:
    """'int8', 'int4', 'int4g128', ...: the weight format part of a table key."""
    return f"int{bits}" + (f"g{group_size}" if group_size else "")


# Measured configurations keyed by (format_key, next_pow2(M), N, K). Empty until measured on a GPU: every
# shape uses the heuristic below. benchmarks/weight_only.py --sweep prints entries to paste here, and
# writes the same table as a JSON file that TRT_GPT_WO_CONFIGS can name.
WO_CONFIGS: dict[tuple[str, int, int, int], WoConfig] = {}

# Entries that win over the built-in table: the TRT_GPT_WO_CONFIGS file, and a benchmark's trials.
OVERRIDES: dict[tuple[str, int, int, int], WoConfig] = {}
_loaded_from: list[str] = []


def parse_wo_configs(text: str, source: str) -> dict[tuple[str, int, int, int], WoConfig]:
    """{"int4g128,M,N,K": {"kernel": "gemv", "block_n": 8, ...}} -> table (M rounded up to a power of two)."""
    def entry(key: str, val: Any) -> tuple[tuple[str, int, int, int], WoConfig]:
        fmt, m, n, k = key.split(",")
        if not isinstance(val, dict):
            raise ValueError(f"entry {key!r}: expected an object of WoConfig fields")
        return (fmt, next_pow2(int(m)), int(n), int(k)), WoConfig(**val)

    return parse_json_table(text, source, entry,
                            '{"int4g128,M,N,K": {"kernel": ..., "block_n": ..., "block_k": ...}}')


def dump_wo_configs(table: dict[tuple[str, int, int, int], WoConfig]) -> str:
    return json.dumps({",".join(str(p) for p in key): asdict(cfg) for key, cfg in sorted(table.items())}, indent=1)


def load_env_configs() -> None:
    """Merge the table named by TRT_GPT_WO_CONFIGS into OVERRIDES, once per path."""
    load_env_table(CONFIGS_ENV, parse_wo_configs, OVERRIDES, _loaded_from)


def _split_for(programs: int, k: int, block_k: int) -> int:
    """Split K until the grid has about TARGET_PROGRAMS programs, keeping >= 4 K tiles per split."""
    split = 1
    while programs * split < TARGET_PROGRAMS and k // (2 * split * block_k) >= 4:
        split *= 2
    return split


def heuristic_config(m: int, n: int, k: int, bits: int, group_size: int | None) -> WoConfig:
    """A reasonable untuned choice: the GEMV up to GEMV_MAX_M rows (but the GEMM for large INT4 layers at
    M = 1), the tensor-core GEMM above.

    GEMV tiles: ~1-2 KB of weight bytes a tile with a row segment of >= 128 bytes (16-byte loads by 8+
    threads), the fp32 partials M_PAD * BLOCK_N * BLOCK_K / 2 (int4) bounded to ~32 registers a thread;
    BLOCK_K no wider than a scale group so that one scale a row serves the whole tile.
    """
    m_pad = next_pow2(m)
    cap_k = min(next_pow2(k), group_size or 1 << 30)
    if m == 1 and bits == 4 and (group_size or 1 << 30) >= 128 and n * k > 1 << 24:
        # INT4 at batch 1 is bound by instructions, not bytes: on the large layers the tensor-core GEMM (the
        # row padded to 16, nibbles straight into fp16, `_int4_to_dot`) beat the fold GEMV on an H200
        # (StarCoder2-7B: fc 36.6 against 65.4 us, proj 41.6 against 54.0; SantaCoder-1B's layers, at most
        # 2^24 weights, stayed faster on the GEMV). About 600 programs: K split until the grid has them.
        block_n = 128 if n >= 16384 else 64
        split = 1
        while triton.cdiv(n, block_n) * split < 512 and k // (2 * split * 128) >= 2 and split < 8:
            split *= 2
        return WoConfig("gemm", block_n, 128, num_warps=8 if block_n == 128 else 4,
                        num_stages=3 if block_n == 128 else 4, block_m=16, split_k=split)
    if m <= GEMV_MAX_M:
        # Bytes in flight decide the GEMV: 512-byte row segments (wider than a scale group: the kernel then
        # reads a scale per element, from L1), few rows a program so that there are many programs, and the
        # next tile prefetched. Tiles of 1 KB, one in flight (16 rows x 64 bytes, groups capping the width)
        # streamed StarCoder2-7B's INT4 weights at ~0.3 TB/s on an H200 (87.8 tok/s at batch 1).
        bytes_per_col = 2 if bits == 4 else 1                 # logical columns a byte holds
        block_k = min(next_pow2(k), 512 * bytes_per_col)
        block_n = max(1, min(8, 2048 // (m_pad * block_k // bytes_per_col)))
        block_n = min(block_n, next_pow2(n))
        split = _split_for(triton.cdiv(n, block_n), k, block_k)
        # "fold": ~3 instead of ~4.5 sm_90 instructions an INT4 weight in the loop (SASS counts)
        cvt = "fold" if bits == 4 and (group_size or 8) >= 8 and k % 8 == 0 else "magic"
        return WoConfig("gemv", block_n, block_k, num_warps=4, num_stages=2, split_k=split, cvt=cvt)
    block_m = min(128, max(16, m_pad))
    block_n = 128 if m >= 128 else 64
    block_k = max(32, min(cap_k, 128 if bits == 4 else 64))
    warps = 8 if block_m * block_n >= 128 * 128 else 4
    programs = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    # "fold" halves the loop's sm_90 instructions a weight (~4.4 against ~8-9, SASS counts); block_k is
    # already within a group
    cvt = "fold" if bits == 4 and (group_size or 8) >= 8 and k % 8 == 0 else "magic"
    return WoConfig("gemm", block_n, block_k, num_warps=warps, num_stages=3, block_m=block_m,
                    split_k=_split_for(programs, k, block_k), cvt=cvt)


def interpreter_config(m: int, n: int, k: int, bits: int, group_size: int | None) -> WoConfig:
    """Tiles for CPU tensors (TRITON_INTERPRET=1): few programs (they run one after another in Python),
    but still several K tiles so that the loops and the tails run."""
    cap_k = min(next_pow2(k), group_size or 1 << 30, 64)
    cvt = heuristic_config(m, n, k, bits, group_size).cvt       # the GPU's kernel variant, small tiles
    if m <= GEMV_MAX_M:
        return WoConfig("gemv", min(16, next_pow2(n)), max(cap_k, 8 if bits == 4 else 1), cvt=cvt)
    return WoConfig("gemm", 16, max(16 if cvt == "fold" else 32, cap_k), block_m=16, cvt=cvt)


def _tabled(fmt: str, m: int, n: int, k: int) -> WoConfig | None:
    """The OVERRIDES entry, else the WO_CONFIGS one, for (fmt, M rounded up to a power of two, N, K)."""
    load_env_configs()
    key = (fmt, next_pow2(max(1, m)), n, k)
    for table in (OVERRIDES, WO_CONFIGS):
        if key in table:
            return table[key]
    return None


def fp8_config(m: int, n: int, k: int, interpret: bool = False) -> WoConfig:
    """The kernel of `triton_weight_only.fp8_gemv` (e4m3 weights and x, M <= GEMV_MAX_M): a table entry
    under the format key "fp8", else the INT8 GEMV's untuned tiles with the e4m3 conversion (an INT8 table
    entry is not one for FP8: it may name a kernel that has no e4m3 variant)."""
    if interpret:
        return dataclasses.replace(interpreter_config(m, n, k, 8, None), cvt="fp8")
    return _tabled("fp8", m, n, k) or dataclasses.replace(heuristic_config(m, n, k, 8, None), cvt="fp8")


def wo_config(m: int, n: int, k: int, bits: int, group_size: int | None, interpret: bool = False) -> WoConfig:
    """OVERRIDES, then WO_CONFIGS, then the heuristic (the interpreter's tiles on CPU)."""
    if interpret:
        return interpreter_config(m, n, k, bits, group_size)
    return _tabled(format_key(bits, group_size), m, n, k) or heuristic_config(m, n, k, bits, group_size)
