"""`trt-gpt bench` with an adapter mix on CPU: random rank-r adapters on a random-weight engine built with
LoRA limits, more adapters than slots; the report carries the mix and its load times. (Speed is measured
on the GPU, never asserted in tests.)"""
from __future__ import annotations

import json

import pytest

from trt_gpt.testing import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def engines(random_engine):
    """(an engine with LoRA limits, one without)."""
    return (random_engine(2, "--max_lora_rank", "8", "--lora_target_modules", "attn_qkv", "mlp_4h_to_h"),
            random_engine(2))


def test_bench_with_adapter_mix(engines):
    proc = run_cli("bench", "--engine_dir", engines[0], "--num_requests", "6", "--input_len", "8", "--output_len",
                   "4", "--concurrency", "4", "--warmup", "1", "--device", "cpu", "--num_loras", "3",
                   "--lora_rank", "4", "--max_loras", "2", "--json")
    report = json.loads(proc.stdout)
    assert report["trt_gpt"]["num_requests"] == 6 and report["trt_gpt"]["output_tokens"] == 24
    lora = report["lora"]
    assert lora["num_loras"] == 3 and lora["rank"] == 4 and lora["slots"] == 2
    assert lora["register_ms"] > 0 and lora["slot_load_ms"] > 0


def test_bench_adapter_mix_needs_a_lora_engine(engines):
    proc = run_cli("bench", "--engine_dir", engines[1], "--num_requests", "2", "--device", "cpu", "--num_loras", "2",
                   check=False)
    assert_one_line_error(proc, "without LoRA")


def test_bench_rejects_rank_above_engine_limit(engines):
    proc = run_cli("bench", "--engine_dir", engines[0], "--num_requests", "2", "--device", "cpu", "--num_loras", "2",
                   "--lora_rank", "16", check=False)
    assert_one_line_error(proc, "max_lora_rank 8")
