"""`trt-gpt bench`: a synthetic workload on an engine, optionally side by side with HF transformers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import TrtGptError
from .common import check_device, err_console, kv_cache_pool, out_console


def bench_cmd(
    engine_dir: Optional[Path] = typer.Option(None, "--engine_dir",
                                              help="The engine (needed by --backend engine)."),
    backend: str = typer.Option("engine", "--backend",
                                help="engine: in-process; openai: a running server at --url, over HTTP."),
    url: Optional[str] = typer.Option(None, "--url", help="--backend openai: the server, e.g. http://127.0.0.1:8000"),
    model: Optional[str] = typer.Option(None, "--model", help="--backend openai: the model id to request."),
    api_key: Optional[str] = typer.Option(None, "--api_key", envvar="TRT_GPT_API_KEY",
                                          help="--backend openai: the server's API key."),
    num_requests: int = typer.Option(64, "--num_requests", help="Requests in the workload."),
    input_len: int = typer.Option(128, "--input_len", help="Prompt tokens a request."),
    output_len: int = typer.Option(128, "--output_len", help="Output tokens a request."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Max requests in flight."),
    request_rate: Optional[float] = typer.Option(None, "--request_rate",
                                                 help="Poisson arrivals per second (default: all at once)."),
    warmup: int = typer.Option(2, "--warmup", help="Warm-up requests before timing."),
    max_batch_size: Optional[int] = typer.Option(None, "--max_batch_size",
                                                help="Requests in flight; default: the engine's."),
    kv_cache_free_gpu_memory_fraction: float = typer.Option(
        0.9, "--kv_cache_free_gpu_memory_fraction", help="Share of free memory for the KV cache."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if present)."),
    compare_hf: bool = typer.Option(False, "--compare_hf", help="Run HF generate on the same work."),
    hf_batch_size: Optional[int] = typer.Option(None, "--hf_batch_size", help="HF batch size (default: all)."),
    hf_compile: bool = typer.Option(True, "--hf_compile/--hf_eager", help="HF static cache + torch.compile."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    output: Optional[Path] = typer.Option(None, "--output", help="Also write the JSON report here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG with throughput and latency percentiles."),
    # ---- LoRA adapter mix (docs/lora.md); the engine needs --max_lora_rank at build
    num_loras: int = typer.Option(0, "--num_loras", help="Random adapters, requests round robin."),
    lora_rank: int = typer.Option(16, "--lora_rank", help="Rank of the random adapters."),
    lora_dir: Optional[list[Path]] = typer.Option(None, "--lora_dir", help="Real adapters instead."),
    max_loras: Optional[int] = typer.Option(None, "--max_loras", help="Device slots (default 8)."),
) -> None:
    """Benchmark an engine: output tok/s, req/s, TTFT and TPOT percentiles, peak GPU memory."""
    from rich.progress import Progress

    from ..bench.engine_bench import run_engine
    from ..bench.workload import Workload
    from ..runtime.llm import LLM

    check_device(device)
    for name, v in (("num_requests", num_requests), ("input_len", input_len), ("output_len", output_len)):
        if v < 1:
            raise TrtGptError(f"bench: --{name} is {v}, expected a positive integer")
    if backend == "openai":
        return _bench_openai(Workload(num_requests, input_len, output_len, concurrency, request_rate), url, model,
                             api_key, engine_dir, warmup, as_json, output, compare_hf)
    if backend != "engine":
        raise TrtGptError(f"bench: --backend is {backend!r}, expected engine or openai")
    if engine_dir is None:
        raise TrtGptError("bench: --engine_dir is required with --backend engine")
    from ..runtime.distributed_llm import llm_factory

    wl = Workload(num_requests, input_len, output_len, concurrency, request_rate)
    # under mpirun/srun, ranks > 0 serve rank 0 inside this call and exit; rank 0 benchmarks and prints
    llm = llm_factory(LLM)(engine_dir, device=device, max_batch_size=max_batch_size,
              kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction, max_loras=max_loras)
    report: dict = {"engine_dir": str(engine_dir), "device": _device_name(llm.engine.device),
                    "dtype": llm.cfg.dtype, "workload": wl.__dict__, "kv_cache": kv_cache_pool(llm)}
    loras = None
    if num_loras or lora_dir:
        from ..bench.lora_mix import setup_loras

        loras, report["lora"] = setup_loras(llm, num_loras, lora_rank, lora_dir)
    with Progress(transient=True, console=err_console) as prog:
        task = prog.add_task("trt-gpt", total=num_requests)
        report["trt_gpt"] = run_engine(llm, wl, warmup, progress=lambda d: prog.update(task, completed=d),
                                       loras=loras)
    if compare_hf:
        from ..bench.hf_bench import run_hf_isolated

        bs = hf_batch_size or (concurrency or min(num_requests, 64))
        del llm  # free the KV cache pool for HF
        import gc

        gc.collect()
        _empty_cache()
        err_console.print(f"running HF transformers (batch {bs}) on the same workload…")
        report["hf"] = run_hf_isolated(_cfg(engine_dir), wl, _device(device), bs, hf_compile)
        if "error" in report["hf"]:
            raise TrtGptError(f"--compare_hf: HF transformers could not run this workload ({report['hf']['error']})")
        report["speedup_vs_hf"] = report["trt_gpt"]["output_tok_per_s"] / report["hf"]["output_tok_per_s"]
    text = json.dumps(report, indent=2)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    if plot:
        from ..bench.plot import plot_report

        plot_report(report, plot)
    if as_json:
        print(text)
    else:
        _print_table(report)
    r = report["trt_gpt"]
    err_console.print(f"bench: {r['output_tok_per_s']:.0f} output tok/s, {r['requests_per_s']:.2f} req/s, "
                      f"TTFT p50 {r['ttft_ms']['p50']:.1f} ms, TPOT p50 {r['tpot_ms']['p50']:.2f} ms"
                      + (f", {report['speedup_vs_hf']:.1f}x HF ({report['hf']['mode']})" if compare_hf else ""))


def _bench_openai(wl, url: Optional[str], model: Optional[str], api_key: Optional[str], engine_dir: Optional[Path],
                  warmup: int, as_json: bool, output: Optional[Path], compare_hf: bool) -> None:
    """`--backend openai`: the workload through a running server's /v1/completions (streamed)."""
    from rich.progress import Progress

    from ..bench.openai_bench import DEFAULT_VOCAB, run_openai

    if not url:
        raise TrtGptError("bench: --backend openai needs --url (e.g. http://127.0.0.1:8000)")
    if compare_hf:
        raise TrtGptError("bench: --compare_hf runs with --backend engine only")
    # prompt ids from the engine's vocabulary when it is at hand, else ids every real vocabulary has
    vocab = _cfg(engine_dir).vocab_size if engine_dir is not None else DEFAULT_VOCAB
    report: dict = {"backend": "openai", "url": url, "workload": wl.__dict__}
    with Progress(transient=True, console=err_console) as prog:
        task = prog.add_task("requests", total=wl.num_requests)
        report["trt_gpt"] = run_openai(wl, url, model, api_key, vocab, warmup,
                                       progress=lambda d: prog.update(task, completed=d))
    text = json.dumps(report, indent=2)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    if as_json:
        print(text)
    else:
        _print_table(report)
    r = report["trt_gpt"]
    if r["errors"]:
        raise TrtGptError(f"bench: {r['errors']} of {wl.num_requests} requests failed (first: {r['first_errors'][0]})")
    err_console.print(f"bench (openai, {url}): {r['output_tok_per_s']:.0f} output tok/s, {r['requests_per_s']:.2f} "
                      f"req/s, TTFT p50 {r['ttft_ms']['p50']:.1f} ms, TPOT p50 {r['tpot_ms']['p50']:.2f} ms")


def _cfg(engine_dir: Path):
    from ..checkpoint import load_engine_config

    return load_engine_config(engine_dir)[0]


def _device(device: Optional[str]):
    from ..runtime.engine import pick_device

    return pick_device(device)


def _device_name(dev) -> str:
    import torch

    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _print_table(report: dict) -> None:
    from rich.table import Table

    table = Table("metric", "trt-gpt", *(["HF " + report["hf"]["mode"]] if "hf" in report else []))
    rows = [("output tok/s", "output_tok_per_s", "{:.0f}"), ("requests/s", "requests_per_s", "{:.2f}")]
    for label, key, fmt in rows:
        table.add_row(label, *[fmt.format(report[k][key]) for k in ("trt_gpt", "hf") if k in report])
    for metric in ("ttft_ms", "tpot_ms"):
        for p in ("p50", "p90", "p99"):
            table.add_row(f"{metric[:-3].upper()} {p} (ms)",
                          *[f"{report[k][metric][p]:.2f}" for k in ("trt_gpt", "hf") if k in report])
    table.add_row("peak GPU mem (GiB)", *[f"{report[k]['peak_gpu_mem_gib']:.2f}" if report[k]["peak_gpu_mem_gib"]
                                           is not None else "-" for k in ("trt_gpt", "hf") if k in report])
    out_console.print(table)
