"""The fused GEMV's tile configurations: the tuned table, the heuristic and the run-time override file."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from trt_gpt.kernels import gemv_configs  # noqa: E402
from trt_gpt.kernels.gemv_configs import GemvConfig, gemv_config  # noqa: E402


def test_gemv_config_table_and_heuristic(monkeypatch):
    for m in (1, 3, 8):
        for n, k in ((37, 100), (2048, 2048), (49152, 4608)):
            c = gemv_config(m, n, k, torch.float16)
            assert c.block_n & (c.block_n - 1) == 0 and c.block_k & (c.block_k - 1) == 0
            assert c.block_k <= max(32, gemv_configs.next_pow2(k))
    assert gemv_config(1, 4096, 4096, torch.float16) == GemvConfig(4, 512, 4, 1)
    tuned = GemvConfig(block_n=8, block_k=256, num_warps=8, num_stages=3)
    monkeypatch.setitem(gemv_configs.GEMV_CONFIGS, (4, 1000, 512), tuned)
    assert gemv_config(3, 1000, 512, torch.float16) == tuned   # M=3 uses the M=4 entry


def test_tuned_table_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "gemv.json"
    path.write_text('{"1,4096,4096": [16, 256, 8, 1], "3,1000,512": [2, 128, 4, 2]}')
    monkeypatch.setenv(gemv_configs.CONFIGS_ENV, str(path))
    monkeypatch.setattr(gemv_configs, "OVERRIDES", {})
    monkeypatch.setattr(gemv_configs, "_loaded_from", [])
    assert gemv_config(1, 4096, 4096, torch.float16) == GemvConfig(16, 256, 8, 1)
    # the file wins over the built-in tables, the per-GPU ones included
    monkeypatch.setitem(gemv_configs.DEVICE_GEMV_CONFIGS, "H200", {(1, 4096, 4096): GemvConfig(2, 512, 4, 1)})
    assert gemv_config(1, 4096, 4096, torch.float16, "NVIDIA H200") == GemvConfig(16, 256, 8, 1)
    assert gemv_config(4, 1000, 512, torch.float16) == GemvConfig(2, 128, 4, 2)   # M=3 keyed as 4
    for bad, why in (('[1, 2]', "top level"), ('{"1,2,3": [3, 256, 4, 1]}', "powers of two"),
                     ('{"1,2": [1, 256, 4, 1]}', "expected"), ('not json', "expected")):
        with pytest.raises(ValueError, match=why):
            gemv_configs.parse_gemv_configs(bad, "x.json")
    monkeypatch.setenv(gemv_configs.CONFIGS_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="cannot read"):
        gemv_configs.load_env_configs()


def test_per_gpu_table_comes_before_the_default_one(monkeypatch):
    monkeypatch.setattr(gemv_configs, "OVERRIDES", {})
    h100 = gemv_config(1, 4096, 1024, torch.float16)
    h200 = gemv_configs.DEVICE_GEMV_CONFIGS["H200"][(1, 4096, 1024)]
    assert h100 != h200
    assert gemv_config(1, 4096, 1024, torch.float16, "NVIDIA H200") == h200
    assert gemv_config(1, 4096, 1024, torch.float16, "NVIDIA H100 80GB HBM3") == h100   # no H100 table: default
    assert gemv_config(1, 4608, 4608, torch.float16, "NVIDIA H200") == gemv_config(1, 4608, 4608, torch.float16)
    assert gemv_configs.device_table("Some other GPU") == {}


def test_interpreter_tiles_are_few_but_still_loop():
    # CPU tensors run interpreted: wide tiles (few programs), yet a vocabulary-sized N keeps several
    # programs (the argmax partials) and a wide K several K tiles; small shapes take one power-of-two tile.
    cfg = gemv_configs.interpreter_config(97, 1024)
    assert (cfg.block_n, cfg.block_k) == (32, 128)          # 4 programs, 8 K tiles
    assert gemv_configs.interpreter_config(5, 24) == GemvConfig(8, 32, 4, 1)


def test_early_release_and_prefetch_round_trip_through_the_tuned_file():
    table = gemv_configs.parse_gemv_configs('{"1,64,128": [4, 128, 4, 1, 1], "1,32,128": [4, 128, 4, 1, 0], '
                                            '"1,16,128": [4, 64, 4, 1, 0, 2]}', "t.json")
    assert table[(1, 64, 128)] == GemvConfig(4, 128, 4, 1, early_release=True)
    assert table[(1, 32, 128)] == GemvConfig(4, 128, 4, 1)
    assert table[(1, 16, 128)] == GemvConfig(4, 64, 4, 1, prefetch_tiles=2)
    assert [table[key].as_list() for key in ((1, 64, 128), (1, 32, 128), (1, 16, 128))] == [
        [4, 128, 4, 1, 1], [4, 128, 4, 1], [4, 64, 4, 1, 0, 2]]
    assert GemvConfig(4, 64, 4, 1, True, 2).as_list() == [4, 64, 4, 1, 1, 2]
    for bad, why in (('{"1,2,3": [1, 256, 4, 1, 2]}', "0 or 1"), ('{"1,2,3": [1, 256, 4, 1, 0, 3]}', "1 or 2"),
                     ('{"1,2,3": [1, 256, 4, 1, 1, 1, 1]}', "four to six")):
        with pytest.raises(ValueError, match=why):
            gemv_configs.parse_gemv_configs(bad, "x.json")
    with pytest.raises(ValueError, match="prefetch_tiles"):
        GemvConfig(4, 64, 4, 1, prefetch_tiles=3)
