"""LoRA adapters on quantized base engines: the adapters stay in float while the base is INT8 / INT4
weight-only, FP8 or SmoothQuant W8A8.

Oracles, independent of the code under test:
* weight-only: HF transformers with every quantized linear replaced by the checkpoint's own integers x
  scales (unpacked and scaled by hand in `wo_oracle`), wrapped by PEFT's `PeftModel` with the same adapter;
* FP8 and SmoothQuant: one layer of the engine (the very module the model calls, adapter attached by the
  slot pool) against a float64 computation from the format's definition plus s * (x A^T) B^T with A, B read
  from the PEFT adapter file; for FP8 also the whole engine against PEFT on HF with FP8 applied by hooks.
* SmoothQuant's qkv and fc read norm(x) / s with s folded into the norm and not kept: adapters there are
  refused in one line (they would add the wrong delta).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from trt_gpt import LLM, SamplingParams  # noqa: E402
from trt_gpt.build import build  # noqa: E402
from trt_gpt.config import BuildConfig, QuantConfig  # noqa: E402
from trt_gpt.convert import convert  # noqa: E402
from trt_gpt.lora.testing import make_peft_adapter, peft_greedy, peft_logits  # noqa: E402
from trt_gpt.testing import random_prompts  # noqa: E402

from trt_gpt.quant.formats import smoothquant_algo  # noqa: E402

from wo_oracle import dequantized_reference, hf_gpt2  # noqa: E402

VOCAB, N = 211, 6
# every GPT-2 linear; r=4, alpha=8: PEFT's scale 2
LORA_KW = dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)


def quantized_lora_engine(work: Path, qcfg: QuantConfig, stats=None, targets: list[str] | None = None
                          ) -> tuple[Path, Path, Path]:
    """tiny GPT-2 under work/hf (kept when there), a PEFT adapter for it (on `targets`, default every linear),
    the checkpoint converted with `qcfg` and an engine built with the adapter as task uid 0; returns
    (hf dir, adapter dir, engine dir)."""
    if not (work / "hf").is_dir():
        hf_gpt2(work / "hf")
    lora = make_peft_adapter(work / "hf", work / "lora", seed=1,
                             **{**LORA_KW, "target_modules": targets or LORA_KW["target_modules"]})
    convert(work / "hf", work / "ckpt", dtype="float32", quantization=qcfg, stats=stats, overwrite=True)
    build(work / "engine", BuildConfig(max_input_len=64, tokens_per_block=16, max_batch_size=4, max_lora_rank=8),
          checkpoint_dir=work / "ckpt", overwrite=True, lora_dirs=[lora])
    return work / "hf", lora, work / "engine"


def peft_on(base: torch.nn.Module, lora: Path | None) -> torch.nn.Module:
    from peft import PeftModel

    if lora is None:
        return base
    return PeftModel.from_pretrained(base, str(lora)).double().eval()


# ------------------------------------------------------------------ weight-only base + PEFT LoRA
class WeightOnlyCase:
    """A weight-only engine with the adapter as uid 0, and the PEFT references: `ref` (the adapter on HF with
    the checkpoint's dequantized weights), `base` (that model alone), `float_ref` (the adapter on the float HF
    model, which the engine must NOT match)."""

    def __init__(self, work: Path, algo: str, bits: int):
        from transformers import GPT2LMHeadModel

        self.bits = bits
        hf_dir, self.lora, self.engine = quantized_lora_engine(work, QuantConfig(quant_algo=algo, group_size=16))
        hf = GPT2LMHeadModel.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        self.base = dequantized_reference(hf, "gpt2", work / "ckpt", bits)          # float64, integers x scales
        self.ref = peft_on(dequantized_reference(hf, "gpt2", work / "ckpt", bits), self.lora)
        self.float_ref = peft_on(GPT2LMHeadModel.from_pretrained(str(hf_dir), dtype=torch.float64).eval(), self.lora)

    def greedy(self, uid: int, prompt: list[int], n: int = N) -> list[int]:
        return peft_greedy(self.ref if uid == 0 else self.base, prompt, n)


@pytest.fixture(scope="module", params=[("W8A16", 8), ("W4A16_GPTQ", 4)], ids=["int8", "int4_g16"])
def wo_case(request, tmp_path_factory) -> WeightOnlyCase:
    return WeightOnlyCase(tmp_path_factory.mktemp(request.param[0]), *request.param)



def assert_base_plus_delta(lin, x, base, adapter, hf_mod, role):
    """The layer's output on x equals the quantized base product `base` (float64, from the format's
    definition) plus the adapter's float64 delta on the first four rows (the rows that use it), and the
    delta is visible at the 1e-3 tolerance."""
    want = base.clone()
    want[:4] += lora_delta64(x[:4], adapter, hf_mod)
    with torch.no_grad():
        got = lin(x)
    assert (got.double() - want).abs().max().item() <= 1e-3, role
    assert (base[:4] - want[:4]).abs().max().item() > 1e-2

def test_weight_only_base_with_lora_matches_peft_on_dequantized(wo_case):
    c = wo_case
    llm = LLM(c.engine, device="cpu")
    assert llm.lora.pool.dtype == torch.float32      # the adapter in the model's float dtype, not the base's ints
    assert llm.engine.model.transformer.layers[0].mlp.fc.method.name.startswith(f"int{c.bits}")

    prompts = random_prompts(VOCAB, [5, 11], seed=3)
    for p, got in zip(prompts, llm.score(prompts, lora=0)):
        want = peft_logits(c.ref, p)
        assert (want - got).abs().max().item() <= 1e-4
        assert (peft_logits(c.base, p) - want).abs().max().item() > 1e-2     # the adapter matters here
        # and so does the quantization: PEFT on the float model is not what the engine computes
        assert (peft_logits(c.float_ref, p) - got).abs().max().item() > 1e-3
    outs = llm.generate(prompts, SamplingParams(max_tokens=N, lora=0))
    for p, o in zip(prompts, outs):
        assert o.token_ids == c.greedy(0, p)

    # a mixed batch (adapter, none) equals each request alone (and the references)
    keys = [0, -1]
    mixed = llm.generate(prompts, [SamplingParams(max_tokens=N, lora=k, return_logits=True) for k in keys])
    for p, k, o in zip(prompts, keys, mixed):
        alone = llm.generate([p], SamplingParams(max_tokens=N, lora=k, return_logits=True))[0]
        assert o.token_ids == alone.token_ids == c.greedy(k, p)
        assert (o.generation_logits - alone.generation_logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("fused_rows", ["0", "4"], ids=["module-path", "fused-path"])
def test_weight_only_base_with_triton_lora_kernel(wo_case, monkeypatch, fused_rows):
    """The GPU's path on CPU: the Triton gather-matmul (interpreted) reading the decode graphs' fixed slot
    column, over the weight-only layers; a mixed batch equals the PEFT references. With steps of up to 4
    rows on the small-batch fused path, the adapter runs beside the weight-only GEMV (which has no LoRA
    epilogue). INT4 only (the kernel sees the base's float output either way; the interpreter is slow)."""
    if wo_case.bits != 4:
        pytest.skip("one weight-only format suffices for the kernel path")
    monkeypatch.setenv("TRT_GPT_ATTENTION_BACKEND", "triton")
    monkeypatch.setenv("TRT_GPT_CUDA_GRAPHS", "eager")
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", fused_rows)
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    llm = LLM(wo_case.engine, device="cpu")
    assert llm.executor.graphs is not None and llm.lora.pool.triton
    fused, layers = llm.engine.model.fused, []
    assert (fused is not None) == (fused_rows != "0")
    if fused is not None:
        real = fused.layer
        fused.layer = lambda *a, **k: layers.append(1) or real(*a, **k)
    keys = [0, -1, 0]
    prompts = random_prompts(VOCAB, [4, 5, 3], seed=6)
    outs = llm.generate(prompts, [SamplingParams(max_tokens=4, lora=k) for k in keys])
    assert [o.token_ids for o in outs] == [wo_case.greedy(k, p, 4) for k, p in zip(keys, prompts)]
    assert bool(layers) == (fused is not None)


# ------------------------------------------------------------------ FP8 / SmoothQuant base: layer level
# canonical role -> (module under a decoder layer, the HF GPT-2 module PEFT targets)
LAYER_ROLES = {"qkv": ("attention.qkv", "attn.c_attn"), "dense": ("attention.dense", "attn.c_proj"),
               "fc": ("mlp.fc", "mlp.c_fc"), "proj": ("mlp.proj", "mlp.c_proj")}


def calibrated_lora_engine(work: Path, qcfg: QuantConfig, targets: list[str] | None = None
                           ) -> tuple[LLM, dict, dict]:
    """The engine of `quantized_lora_engine` calibrated on random prompts; returns (its LLM with the adapter
    resident and staged for tokens 0..3, tokens 4..5 without it; the checkpoint; the adapter's tensors)."""
    from quant_cases import Stats, record_absmax

    hf = hf_gpt2(work / "hf")
    absmax = record_absmax(hf, random_prompts(VOCAB, [40, 33], seed=3))
    _, lora, engine = quantized_lora_engine(work, qcfg, Stats(absmax), targets)
    llm = LLM(engine, device="cpu")
    llm.lora.acquire(10_000, "0")
    slot = llm.lora.request_slot[10_000]
    llm.lora.pool.stage([slot] * 4 + [-1] * 2, 6)
    return llm, load_file(str(work / "ckpt" / "rank0.safetensors")), load_file(str(lora / "adapter_model.safetensors"))


def lora_delta64(x: torch.Tensor, adapter: dict, hf_module: str, scale: float = LORA_KW["lora_alpha"] / LORA_KW["r"]
                 ) -> torch.Tensor:
    """s * (x A^T) B^T in float64 from PEFT's tensors of layer 0's `hf_module` (A [r, in], B [out, r])."""
    pre = f"base_model.model.transformer.h.0.{hf_module}"
    a, b = adapter[f"{pre}.lora_A.weight"].double(), adapter[f"{pre}.lora_B.weight"].double()
    return scale * (x.double() @ a.t()) @ b.t()


def layer_inputs(n_in: int) -> torch.Tensor:
    return torch.randn(6, n_in, generator=torch.Generator().manual_seed(7))


def test_fp8_base_keeps_float_adapter_and_adds_its_delta(tmp_path):
    """y = FP8 product (fp8_ref's definition, here in float64) + s (x A^T) B^T for the adapter's tokens."""
    llm, ckpt, adapter = calibrated_lora_engine(tmp_path, QuantConfig(quant_algo="FP8"))
    pool = llm.lora.pool
    assert pool.dtype == torch.float32 and all(a.dtype == b.dtype == torch.float32 for a, b in pool.tensors.values())
    layer = llm.engine.model.transformer.layers[0]
    for role, (path, hf_mod) in LAYER_ROLES.items():
        lin = layer.get_submodule(path)
        assert lin.weight.dtype == torch.float8_e4m3fn and lin.adapter is not None
        name = f"transformer.layers.0.{path}"
        x = layer_inputs(lin.in_features)
        s_x, s_w = ckpt[f"{name}.activation_scaling_factor"], ckpt[f"{name}.weights_scaling_factor"]
        # e4m3(saturate(x / s_x)): the division in x's fp32, the cast is the e4m3 rounding itself
        x_q = (x / s_x).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).double()
        base = (x_q @ ckpt[f"{name}.weight"].double().t()) * (s_x.double() * s_w.double()) \
            + ckpt[f"{name}.bias"].double()
        assert_base_plus_delta(lin, x, base, adapter, hf_mod, role)
    # and the engine runs with the adapter, which changes its logits
    p = random_prompts(VOCAB, [9], seed=4)
    assert (llm.score(p, lora=0)[0] - llm.score(p)[0]).abs().max().item() > 1e-2


def test_fp8_engine_with_lora_matches_peft_on_fp8_definition(tmp_path):
    """Engine level: HF in float64 with every linear's weight the checkpoint's e4m3 values x s_w and its input
    rounded to e4m3 with the static scale (a pre-hook on the base layer, `test_fp8_ref`'s rounding), wrapped
    by PEFT with the adapter (whose branch reads the unrounded input): logits within 1e-3 relative."""
    from quant_cases import MODS, hf_module
    from test_fp8_ref import e4m3_round_64
    from transformers import GPT2LMHeadModel

    llm, ckpt, _ = calibrated_lora_engine(tmp_path, QuantConfig(quant_algo="FP8"))
    llm.lora.release(10_000)
    ref = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).double().eval()
    for i in range(2):
        for mod in MODS:
            name = f"transformer.layers.{i}.{mod}"
            m = hf_module(ref, i, mod)
            m.weight.data.copy_((ckpt[f"{name}.weight"].double() * ckpt[f"{name}.weights_scaling_factor"].double()).T)
            s_x = ckpt[f"{name}.activation_scaling_factor"].double()
            m.register_forward_pre_hook(lambda mod_, inp, s_x=s_x: (e4m3_round_64(inp[0] / s_x) * s_x,))
    base = peft_logits(ref, [1, 2, 3])
    ref = peft_on(ref, tmp_path / "lora")
    assert (peft_logits(ref, [1, 2, 3]) - base).abs().max().item() > 1e-2     # PEFT did wrap the FP8 layers
    prompts = random_prompts(VOCAB, [12, 7], seed=9)
    for p, got in zip(prompts, llm.score(prompts, lora=0)):
        want = ref(torch.tensor([p])).logits[0].detach()
        assert ((got.double() - want).abs().max() / want.abs().max()).item() <= 1e-3


SQ = QuantConfig(quant_algo=smoothquant_algo(True, True), smoothquant_val=0.5)


def test_smoothquant_base_adds_the_float_delta(tmp_path):
    """W8A8 (per-token, per-channel) base, adapter on dense and proj (the layers whose smoothing is the
    runtime `smoother`, so they read the model's own activations): y = the W8A8 product (int8_gemm_ref's
    definition, float64 here, the smoother included) + s (x A^T) B^T for the adapter's tokens."""
    llm, ckpt, adapter = calibrated_lora_engine(tmp_path, SQ, targets=["c_proj"])
    assert llm.lora.pool.dtype == torch.float32
    layer = llm.engine.model.transformer.layers[0]
    for role in ("dense", "proj"):
        path, hf_mod = LAYER_ROLES[role]
        lin = layer.get_submodule(path)
        assert lin.weight.dtype == torch.int8 and lin.adapter is not None
        name = f"transformer.layers.0.{path}"
        x = layer_inputs(lin.in_features)
        xs = x / ckpt[f"{name}.smoother"]                 # fp32, as defined
        s_x = xs.abs().amax(dim=1, keepdim=True) / 127.0
        x_q = torch.round((xs / s_x).clamp(-127.0, 127.0)).double()
        base = (x_q @ ckpt[f"{name}.weight"].double().t()) * s_x.double() * ckpt[f"{name}.per_channel_scale"].double() \
            + ckpt[f"{name}.bias"].double()
        assert_base_plus_delta(lin, x, base, adapter, hf_mod, role)


@pytest.mark.parametrize("target,role", [("c_attn", "qkv"), ("c_fc", "fc")])
def test_smoothquant_refuses_adapter_on_norm_smoothed_layer(tmp_path, target, role):
    """qkv and fc read the norm's output divided by the smoothing scale folded into the norm (which the
    checkpoint does not keep): an adapter there would add s (x/s_sq A^T) B^T, a wrong delta. Refused in one
    line at build and when added at run time, naming the adapter, layer and role."""
    from quant_cases import Stats, record_absmax

    from trt_gpt.errors import TrtGptError

    hf = hf_gpt2(tmp_path / "hf")
    stats = Stats(record_absmax(hf, random_prompts(VOCAB, [40], seed=3)))
    with pytest.raises(TrtGptError) as e:
        quantized_lora_engine(tmp_path, SQ, stats, targets=[target])
    msg = str(e.value)
    assert "\n" not in msg and f"layer 0 {role}" in msg and "SmoothQuant" in msg
    assert not (tmp_path / "engine").exists()
    # an engine with an allowed adapter, then the refused one at run time; the first keeps working
    _, good, engine = quantized_lora_engine(tmp_path, SQ, stats, targets=["c_proj"])
    bad = make_peft_adapter(tmp_path / "hf", tmp_path / "bad", seed=2, **{**LORA_KW, "target_modules": [target]})
    llm = LLM(engine, device="cpu")
    with pytest.raises(TrtGptError, match=f"layer 0 {role}.*SmoothQuant"):
        llm.add_lora("bad", bad)
    p = random_prompts(VOCAB, [7], seed=4)
    assert (llm.score(p, lora=0)[0] - llm.score(p)[0]).abs().max().item() > 1e-2


def test_fp8_starcoder2_fp16_keeps_fp16_adapter(tmp_path):
    """The reference's example: an FP8 StarCoder2 (GQA) in float16 with a PEFT LoRA on q/k/v/o. The pool is
    float16; the fused qkv layer adds each projection's delta to its rows: y = FP8 product + [dq | dk | dv],
    checked against float64 from the definitions (fp16 output: 2e-3 of the largest value)."""
    from wo_oracle import hf_starcoder2

    hf_starcoder2(tmp_path / "hf")
    lora = make_peft_adapter(tmp_path / "hf", tmp_path / "lora", seed=1, r=4, lora_alpha=8,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float16", quantization=QuantConfig(quant_algo="FP8"))
    build(tmp_path / "engine", BuildConfig(max_input_len=64, tokens_per_block=16, max_batch_size=2),
          checkpoint_dir=tmp_path / "ckpt", lora_dirs=[lora])
    llm = LLM(tmp_path / "engine", device="cpu")
    pool = llm.lora.pool
    assert pool.dtype == torch.float16 and all(a.dtype == b.dtype == torch.float16 for a, b in pool.tensors.values())
    lin = llm.engine.model.transformer.layers[0].attention.qkv
    assert lin.weight.dtype == torch.float8_e4m3fn
    llm.lora.acquire(1, "0")
    pool.stage([llm.lora.request_slot[1]] * 3, 3)

    ckpt = load_file(str(tmp_path / "ckpt" / "rank0.safetensors"))
    ad = load_file(str(lora / "adapter_model.safetensors"))
    name = "transformer.layers.0.attention.qkv"
    x = layer_inputs(lin.in_features)[:3].half()
    s_x, s_w = ckpt[f"{name}.activation_scaling_factor"], ckpt[f"{name}.weights_scaling_factor"]
    x_q = (x.float() / s_x).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).double()
    want = (x_q @ ckpt[f"{name}.weight"].double().t()) * (s_x.double() * s_w.double())
    if f"{name}.bias" in ckpt:
        want += ckpt[f"{name}.bias"].double()
    base = want.clone()
    pre = "base_model.model.model.layers.0.self_attn"
    want += torch.cat([2.0 * (x.double() @ ad[f"{pre}.{p}.lora_A.weight"].double().t())
                       @ ad[f"{pre}.{p}.lora_B.weight"].double().t() for p in ("q_proj", "k_proj", "v_proj")], dim=1)
    with torch.no_grad():
        got = lin(x)
    assert got.dtype == torch.float16
    assert (got.double() - want).abs().max().item() <= 2e-3 * want.abs().max().item()
    assert (base - want).abs().max().item() > 0.1 * want.abs().max().item()    # the delta is no rounding error
