"""W8A8 (SmoothQuant), FP8 and 8-bit-KV-cache engines on the GPU (Triton INT8 kernels, torch._scaled_mm, the
Triton attention kernels on INT8 / FP8 caches, CUDA graphs) against the same engines on the CPU (exact
integer arithmetic, FP8 emulation, the torch attention reference): prefill and decode logits within
1% (relative norm: activation quantization may round a value the other way when the two devices' fp32
sums differ in the last bit), and greedy tokens of the captured decode path equal while logits agree.
Skipped without CUDA (and FP8 without a GPU of compute capability >= 8.9)."""
from __future__ import annotations

import pytest
import torch

from quant_cases import Stats, hf_tiny, record_absmax

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, QuantConfig
from trt_gpt.convert import convert
from trt_gpt.kernels.fp8_ref import fp8_supported
from trt_gpt.quant.formats import smoothquant_algo
from trt_gpt.testing import random_prompts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# name -> (quant_algo, kv_cache_quant_algo)
ALGOS = {"sq-token-channel": (smoothquant_algo(True, True), None),
         "sq-static-tensor": (smoothquant_algo(False, False), None), "fp8": ("FP8", None),
         "int8-kv": (None, "INT8"), "sq-int8-kv": (smoothquant_algo(True, True), "INT8"), "fp8-fp8-kv": ("FP8", "FP8")}


@pytest.mark.parametrize("name", list(ALGOS))
def test_gpu_quantized_engine_tracks_cpu(tmp_path, name):
    from trt_gpt import LLM, SamplingParams

    algo, kv = ALGOS[name]
    if "fp8" in name and fp8_supported("cuda") is not None:
        pytest.skip(fp8_supported("cuda"))
    hf = hf_tiny(tmp_path / "hf")
    outs = {}
    absmax = record_absmax(hf, random_prompts(211, [40, 33, 50], seed=3), outs)
    convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32", overwrite=True, stats=Stats(absmax, outs),
            quantization=QuantConfig(quant_algo=algo, kv_cache_quant_algo=kv))
    build(tmp_path / "engine", BuildConfig(max_input_len=64, max_seq_len=128, max_batch_size=4, tokens_per_block=16),
          checkpoint_dir=tmp_path / "ckpt")
    cpu, gpu = LLM(tmp_path / "engine", device="cpu"), LLM(tmp_path / "engine", device="cuda")
    assert gpu.executor.graphs is not None and gpu.engine.model.backend.name == "triton"
    assert gpu.engine.kv_spec.quantized == (kv is not None)
    prompts = random_prompts(211, [5, 40, 1, 30], seed=4)
    for ref, got in zip(cpu.score(prompts), gpu.score(prompts)):
        assert ((ref - got.cpu()).norm() / ref.norm()).item() <= 1e-2
    params = SamplingParams(max_tokens=12, return_logits=True)
    for p in prompts[:2]:
        ref, got = cpu.generate([p], params)[0], gpu.generate([p], params)[0]
        n = next((i for i, (a, b) in enumerate(zip(ref.token_ids, got.token_ids)) if a != b), len(ref.token_ids))
        a, b = ref.generation_logits[:max(n, 1)], got.generation_logits[:max(n, 1)].float().cpu()
        assert ((a - b).norm() / a.norm()).item() <= 1e-2
        assert n >= 6, (ref.token_ids, got.token_ids)
