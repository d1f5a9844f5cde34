"""Weight-only engines at tensor parallelism 2 (`mpirun -np 2`, gloo, CPU, fp32): rank files quantized per
rank after sharding (row-parallel groups inside the local input slice, AWQ statistics cut to each rank's
inputs); logits equal HF in float64 whose weights are the dequantized integers of both ranks reassembled,
for MHA (GPT-2, AWQ group 32), MQA (GPTBigCode, INT8, K/V replicated) and GQA + RoPE (StarCoder2, INT4)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, QuantConfig
from trt_gpt.convert import convert
from trt_gpt.quant.calibration import collect_stats, float_model
from trt_gpt.testing import random_prompts

import wo_oracle as oracle
from mpi_helpers import Case, mpirun, run_cases

TP = 2
CASES = {"gpt2 awq g32": ("gpt2", QuantConfig(quant_algo="W4A16_AWQ", group_size=32), 4),
         "bigcode int8": ("bigcode", QuantConfig(quant_algo="W8A16"), 8),
         "starcoder2 int4": ("starcoder2", QuantConfig(quant_algo="W4A16"), 4)}


def dequantized(t: dict, name: str, bits: int) -> torch.Tensor:
    q, s = oracle.integers_and_scale(t, name, bits)
    w = q.double() * s
    if f"{name}.prequant_scaling_factor" in t:
        w = w * t[f"{name}.prequant_scaling_factor"].double()[None, :]
    return w


def full_weight(ranks: list[dict], name: str, role: str, bits: int, cfg) -> torch.Tensor:
    """Reassemble the global [out, in] matrix from both ranks' dequantized shards."""
    parts = [dequantized(t, name, bits) for t in ranks]
    if role in ("dense", "proj"):
        return torch.cat(parts, dim=1)            # row-parallel: input columns split
    if role == "fc":
        return torch.cat(parts, dim=0)
    d, hq = cfg.head_size, cfg.num_attention_heads // TP
    kvh = max(cfg.num_key_value_heads // TP, 1)
    q = [p[:hq * d] for p in parts]
    k = [p[hq * d:(hq + kvh) * d] for p in parts]
    v = [p[(hq + kvh) * d:] for p in parts]
    if cfg.num_key_value_heads < TP:              # one KV head, replicated: both ranks hold the same integers
        assert torch.equal(k[0], k[1]) and torch.equal(v[0], v[1])
        k, v = k[:1], v[:1]
    return torch.cat(q + k + v)


@pytest.fixture(scope="module")
def tp2_runs(tmp_path_factory):
    mpirun()
    root = tmp_path_factory.mktemp("wo_tp2")
    cases, refs = [], {}
    for i, (name, (kind, qcfg, bits)) in enumerate(CASES.items()):
        make, vocab = oracle.MODELS[kind]
        work = root / f"case{i}"
        hf = make(work / "hf")
        stats = None
        if qcfg.quant_algo == "W4A16_AWQ":
            stats = collect_stats(float_model(work / "hf", max_positions=128),
                                  random_prompts(vocab, [32] * 4, seed=5), max_samples=64)
        convert(work / "hf", work / "ckpt", dtype="float32", tp_size=TP, quantization=qcfg, stats=stats)
        build(work / "engine", BuildConfig(max_batch_size=8, max_input_len=64, tokens_per_block=4),
              checkpoint_dir=work / "ckpt")
        prompts = random_prompts(vocab, [5, 23, 40], seed=i)
        cases.append(Case(name, work / "engine", work / "engine", prompts, 4))
        refs[name] = (hf, kind, work / "ckpt", bits, prompts)
    return run_cases(TP, cases, root / "out"), refs


@pytest.mark.parametrize("name", list(CASES))
def test_tp2_engine_equals_dequantized_float64(name, tp2_runs):
    results, refs = tp2_runs
    hf, kind, ckpt, bits, prompts = refs[name]
    from trt_gpt.checkpoint import load_checkpoint_config

    cfg = load_checkpoint_config(ckpt)
    ranks = [load_file(str(ckpt / f"rank{r}.safetensors")) for r in range(TP)]
    ref = type(hf)(hf.config).double().eval()
    ref.load_state_dict({k: v.double() for k, v in hf.state_dict().items()})
    for i in range(hf.config.num_hidden_layers):
        for role, path in oracle.ROLES.items():
            w = full_weight(ranks, f"transformer.layers.{i}.{path}", role, bits, cfg)
            oracle.set_canonical(ref, kind, i, role, w)
    logits = load_file(results[name]["logits_file"])
    for i, p in enumerate(prompts):
        with torch.no_grad():
            want = ref(torch.tensor([p])).logits[0]
        err = (logits[f"p{i}"].double() - want).abs().max().item()
        assert err <= oracle.ATOL, f"{name}: tp2 logits differ from the float64 dequantized reference by {err:.3g}"
