"""Weight formats and adapters side by side: one engine a format, loaded once, several workloads each.

    python3 benchmarks/formats.py --shape sc2_7b --formats fp16 w8a16 w4a16_gptq fp8+fp8 \
        --workloads b1 c16 c64 --out DIR

Every engine is made the way a user makes a random-weight one (`trt-gpt config [--quantization F
--kv_cache_dtype K]` + `trt-gpt build --model_config`), then served in-process by the same loop as
`trt-gpt bench` (`bench.engine_bench.run_engine`), so a row here equals `trt-gpt bench` on that engine with
that workload; loading a 7B engine once for all its workloads is what this script adds. A format is
`NAME[+KV]` (`fp16`, `w8a16`, `w4a16`, `w4a16_gptq`, `fp8+fp8`, `w8a8_sq+int8`, `fp16+int8`, ...); a
workload is `b1` (batch 1), `cN` (N requests in flight, N requests), `rN` (N requests all at once),
`ttftN` (one N-token prompt, 2 output tokens), each optionally `+loraK` (K random rank-`--lora_rank`
adapters on every linear layer, round robin; the engine is then built with LoRA). Writes
DIR/<shape>_<format>_<workload>.json (`trt-gpt bench --output`'s report plus the weights' bytes) and
prints one line a run.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {  # vocab hidden layers heads kv_heads ffn position-embedding
    "sc2_7b": (49152, 4608, 32, 36, 4, 18432, "rope_gpt_neox"),
    "sc1b": (49280, 2048, 24, 16, 1, 8192, "learned_absolute"),
    "gpt2m": (50257, 1024, 24, 16, 16, 4096, "learned_absolute"),
    "tiny": (1000, 64, 2, 4, 2, 256, "rope_gpt_neox"),   # a CPU dry run of this script
}
LORA_MODULES = ["attn_qkv", "attn_dense", "mlp_h_to_4h", "mlp_4h_to_h"]


def workload(spec: str):
    from trt_gpt.bench.workload import Workload

    base, _, lora = spec.partition("+")
    m = re.fullmatch(r"(b1|c\d+|r\d+|ttft\d+)", base)
    if not m or (lora and not re.fullmatch(r"lora\d+", lora)):
        sys.exit(f"error: workload {spec!r}: expected b1, cN, rN or ttftN, optionally +loraK")
    n = int(re.sub(r"\D", "", base) or 1)
    if base == "b1":
        wl = Workload(3, 128, 128, concurrency=1)
    elif base.startswith("c"):
        wl = Workload(max(n, 16), 128, 128, concurrency=n)
    elif base.startswith("r"):
        wl = Workload(n, 128, 128)
    else:
        wl = Workload(3, n, 2, concurrency=1)
    return wl, int(lora[4:]) if lora else 0


def build(shape: str, fmt: str, args, lora: bool) -> Path:
    vocab, hidden, layers, heads, kv, ffn, pos = SHAPES[shape]
    quant, _, kv_dtype = fmt.partition("+")
    tag = f"{shape}_{fmt.replace('+', '-')}{'_lora' if lora else ''}"
    cfg, eng = Path(f"/tmp/fmt-{tag}.json"), Path(f"/tmp/fmt-{tag}")
    t = [sys.executable, "-m", "trt_gpt.cli.main"]
    cmd = t + ["config", "--vocab_size", str(vocab), "--hidden_size", str(hidden), "--num_hidden_layers",
               str(layers), "--num_attention_heads", str(heads), "--num_key_value_heads", str(kv),
               "--intermediate_size", str(ffn), "--position_embedding_type", pos, "--max_position_embeddings",
               "4096", "--hidden_act", "gelu", "--dtype", "float16", "--output_path", str(cfg)]
    if quant != "fp16":
        cmd += ["--quantization", quant]
    if kv_dtype:
        cmd += ["--kv_cache_dtype", kv_dtype]
    subprocess.run(cmd, check=True, capture_output=True)
    cmd = t + ["build", "--model_config", str(cfg), "--output_dir", str(eng), "--max_input_len", "2048",
               "--max_seq_len", "4096", "--max_batch_size", str(args.max_batch_size), "--max_num_tokens", "8192",
               "--overwrite"]
    if lora:
        cmd += ["--max_lora_rank", str(args.lora_rank), "--lora_target_modules", *LORA_MODULES]
    subprocess.run(cmd, check=True, capture_output=True)
    return eng


def profile_decode(llm, steps: int) -> list[dict]:
    """torch.profiler over `steps` batch-1 decode steps (CUDA graph replays included): per-step device time
    of each kernel, largest first (the GEMV's share of a step is what the weight formats change)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trt_gpt.runtime.sampling_params import SamplingParams

    seq = llm.add_request(list(range(1, 129)), SamplingParams(max_tokens=steps + 16, min_tokens=steps + 16,
                                                              end_id=None))
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(8):
        llm.step()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            llm.step()
        sync()
    llm.cancel(seq)
    llm.step()
    rows = []
    for e in prof.key_averages():
        us = (getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)) if cuda else \
            e.self_cpu_time_total
        if us > 0:
            rows.append(dict(kernel=e.key[:90], us_per_step=us / steps, calls_per_step=e.count / steps))
    rows.sort(key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    print(f"  profile: {total:.0f} us of {'kernels' if cuda else 'CPU ops'} a decode step; top kernels (us/step, calls/step):")
    for r in rows[:10]:
        print(f"    {r['us_per_step']:9.1f}  {r['calls_per_step']:6.1f}  {r['kernel']}")
    return rows


def weight_bytes(llm) -> int:
    model = llm.engine.model
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="sc2_7b")
    ap.add_argument("--formats", nargs="+", default=["fp16", "w8a16", "w4a16_gptq"])
    ap.add_argument("--workloads", nargs="+", default=["b1"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max_batch_size", type=int, default=64)
    ap.add_argument("--lora_rank", type=int, default=16)
    ap.add_argument("--max_loras", type=int, default=8)
    ap.add_argument("--kv_cache_free_gpu_memory_fraction", type=float, default=0.9)
    ap.add_argument("--repeat", type=int, default=1, help="time each workload this many times (reports _rK)")
    ap.add_argument("--profile_steps", type=int, default=0,
                    help="also profile this many batch-1 decode steps a format (per-kernel device time; written "
                         "to DIR/<shape>_<format>_profile.json)")
    args = ap.parse_args(argv)

    import torch

    from trt_gpt.bench.engine_bench import run_engine
    from trt_gpt.bench.lora_mix import setup_loras
    from trt_gpt.cli.common import kv_cache_pool
    from trt_gpt.runtime.llm import LLM

    args.out.mkdir(parents=True, exist_ok=True)
    wls = [(w, *workload(w)) for w in args.workloads]
    for fmt in args.formats:
        for lora in sorted({bool(k) for _, _, k in wls}):
            t0 = time.perf_counter()
            try:
                eng = build(args.shape, fmt, args, lora)
                llm = LLM(eng, max_batch_size=args.max_batch_size, max_loras=args.max_loras if lora else None,
                          kv_cache_free_gpu_memory_fraction=args.kv_cache_free_gpu_memory_fraction)
            except (subprocess.CalledProcessError, Exception) as e:  # report and go on to the next format
                err = e.stderr.decode()[-400:] if isinstance(e, subprocess.CalledProcessError) else repr(e)
                print(f"{args.shape} {fmt}: FAILED to build/load: {err}", flush=True)
                continue
            wb = weight_bytes(llm)
            print(f"{args.shape} {fmt}{' lora' if lora else ''}: loaded in {time.perf_counter() - t0:.1f} s, "
                  f"weights {wb / 2**30:.2f} GiB, {kv_cache_pool(llm)['tokens']} KV tokens", flush=True)
            for name, wl, nloras in wls:
                if bool(nloras) != lora:
                    continue
                for rep in range(args.repeat):
                    report = {"engine_dir": str(eng), "device": torch.cuda.get_device_name() if
                              torch.cuda.is_available() else "cpu", "dtype": llm.cfg.dtype, "format": fmt,
                              "workload": dataclasses.asdict(wl), "kv_cache": kv_cache_pool(llm),
                              "weight_bytes": wb}
                    try:
                        loras = None
                        if nloras:
                            loras, report["lora"] = setup_loras(llm, nloras, args.lora_rank)
                        # warm-up at the run's concurrency, so that every batch size's kernels are compiled
                        warm = 1 if wl.input_len >= 1024 else min(wl.num_requests, max(2, wl.concurrency or 64))
                        report["trt_gpt"] = r = run_engine(llm, wl, warmup=warm, loras=loras)
                    except Exception as e:  # a failing workload is reported, the others still run
                        print(f"{args.shape} {fmt} {name}: FAILED: {e!r}"[:600], flush=True)
                        break
                    if nloras:
                        for n in loras:
                            llm.remove_lora(n)
                    suffix = f"_r{rep + 1}" if args.repeat > 1 else ""
                    (args.out / f"{args.shape}_{fmt.replace('+', '-')}_{name}{suffix}.json").write_text(
                        json.dumps(report, indent=1) + "\n")
                    print(f"{args.shape:7s} {fmt:14s} {name:12s} {r['output_tok_per_s']:10.1f} tok/s  "
                          f"TTFT p50 {r['ttft_ms']['p50']:8.2f} ms  TPOT p50 {r['tpot_ms']['p50']:7.3f} ms"
                          + (f"  lora load {report['lora']['slot_load_ms']:.2f} ms" if nloras else ""),
                          flush=True)
            if args.profile_steps and not lora:
                try:
                    rows = profile_decode(llm, args.profile_steps)
                    (args.out / f"{args.shape}_{fmt.replace('+', '-')}_profile.json").write_text(
                        json.dumps(dict(format=fmt, steps=args.profile_steps, kernels=rows), indent=1) + "\n")
                except Exception as e:  # noqa: BLE001 - a profile is extra; the timings above stand
                    print(f"{args.shape} {fmt} profile: FAILED: {e!r}"[:400], flush=True)
            del llm
            gc.collect()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
