"""`trt-gpt serve`: an OpenAI-compatible HTTP server over an engine (FastAPI + uvicorn, extra `[serve]`).

Under mpirun/srun (a tensor/pipeline-parallel engine) rank 0 serves HTTP and the other ranks follow its
step plans. SIGTERM (or Ctrl-C) stops accepting connections, lets running requests finish for at most
`--drain_timeout` seconds, then exits.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import TrtGptError
from .common import err_console, lora_ckpt_source_option


def serve_cmd(
    engine_dir: Path = typer.Option(..., "--engine_dir", help="Engine directory to serve."),
    tokenizer_dir: Optional[Path] = typer.Option(None, "--tokenizer_dir",
                                                 help="Default: the engine dir's tokenizer files."),
    vocab_file: Optional[Path] = typer.Option(None, "--vocab_file", help="sentencepiece model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port to listen on."),
    served_model_name: Optional[str] = typer.Option(None, "--served_model_name",
                                                    help="The model id of /v1/models (default: the engine "
                                                         "dir's name)."),
    chat_template: Optional[Path] = typer.Option(None, "--chat_template",
                                                 help="Jinja chat template file (default: the tokenizer's, "
                                                      "else the plain 'role: content' template)."),
    max_queued_requests: int = typer.Option(256, "--max_queued_requests",
                                            help="Requests that may wait beyond the running batch; more: 429."),
    drain_timeout: float = typer.Option(30.0, "--drain_timeout",
                                        help="Seconds running requests may take to finish after SIGTERM."),
    api_key: Optional[str] = typer.Option(None, "--api_key", envvar="TRT_GPT_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on /v1 routes."),
    max_batch_size: Optional[int] = typer.Option(None, "--max_batch_size",
                                                help="Requests running at once (default: the engine's)."),
    max_num_tokens: Optional[int] = typer.Option(None, "--max_num_tokens",
                                                help="Tokens a step (default: the engine's)."),
    kv_cache_free_gpu_memory_fraction: float = typer.Option(
        0.9, "--kv_cache_free_gpu_memory_fraction", help="Share of free memory the KV cache may take."),
    max_tokens_in_paged_kv_cache: Optional[int] = typer.Option(
        None, "--max_tokens_in_paged_kv_cache", help="KV cache size in tokens (instead of the fraction)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if present)."),
    log_level: str = typer.Option("info", "--log_level", help="debug, info, warning, error."),
    # ---- LoRA adapters as models (docs/serving.md); the engine needs --max_lora_rank at build
    lora_dir: Optional[list[str]] = typer.Option(
        None, "--lora_dir", help="LoRA adapters served as models: DIR (id: its name) or NAME=DIR."),
    lora_ckpt_source: str = lora_ckpt_source_option(),
    max_loras: Optional[int] = typer.Option(None, "--max_loras",
                                            help="Adapters resident on the device at once (default 8)."),
) -> None:
    """Serve an engine over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions, /v1/models);
    each LoRA adapter is a model id of its own."""
    try:
        import uvicorn

        from ..serve.app import ServeState, create_app
    except ImportError as e:
        raise TrtGptError(f"serve needs FastAPI, uvicorn and prometheus_client ({e.name} is missing): "
                          "pip install 'trt-gpt[serve]'") from None
    from ..runtime.async_llm import AsyncLLM
    from ..runtime.distributed_llm import llm_factory
    from ..runtime.llm import LLM
    from ..serve.adapters import engine_adapters, parse_lora_dirs, register_lora_dirs
    from ..serve.chat_template import load_chat_template

    if not 0 < port < 65536:
        raise TrtGptError(f"--port is {port}, expected 1..65535")
    if max_queued_requests < 0:
        raise TrtGptError(f"--max_queued_requests is {max_queued_requests}, expected an integer >= 0")
    if drain_timeout < 0:
        raise TrtGptError(f"--drain_timeout is {drain_timeout}, expected seconds >= 0")
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise TrtGptError(f"--log_level is {log_level!r}, expected debug, info, warning or error")
    if max_batch_size is not None and max_batch_size < 1:
        raise TrtGptError(f"--max_batch_size is {max_batch_size}, expected a positive integer")

    # a bad template file or adapter path fails before the engine loads
    template = load_chat_template(chat_template, None) if chat_template is not None else None
    loras = parse_lora_dirs(lora_dir or [])
    if loras:
        from ..checkpoint import load_engine_config
        from ..serve.adapters import NO_LORA

        if not load_engine_config(engine_dir)[1].max_lora_rank:
            raise TrtGptError(f"--lora_dir: {NO_LORA}")
    from ..distributed import discover

    if discover().rank > 0:
        # mpirun forwards SIGTERM to every rank: the followers must outlive rank 0's drain (they run its
        # steps) and end when it releases them at its exit
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
    # mpirun/srun: ranks > 0 follow rank 0's steps inside this call and exit; only rank 0 serves
    llm = llm_factory(LLM)(engine_dir, device=device, tokenizer_dir=tokenizer_dir, vocab_file=vocab_file,
                           kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
                           max_tokens_in_paged_kv_cache=max_tokens_in_paged_kv_cache,
                           max_batch_size=max_batch_size, max_num_tokens=max_num_tokens, max_loras=max_loras)
    tok = llm.tokenizer
    template = template or load_chat_template(None, tok)
    model_name = served_model_name or Path(engine_dir).resolve().name
    register_lora_dirs(llm, loras, lora_ckpt_source, model_name)
    state = ServeState(AsyncLLM(llm), model_name, template, max_queued_requests=max_queued_requests,
                       api_key=api_key, adapters=engine_adapters(llm), lora_source=lora_ckpt_source)
    app = create_app(state)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    serve_log = logging.getLogger("trt_gpt.serve")
    serve_log.handlers[:] = [handler]
    serve_log.setLevel(level)
    serve_log.propagate = False
    serve_log.info("model %s, chat template: %s, up to %d requests in flight, pid %d", state.model_name,
                   template.source, state.capacity, os.getpid())
    if state.adapters:
        serve_log.info("LoRA adapters (model ids): %s", ", ".join(state.adapters))
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=False,
                            timeout_graceful_shutdown=drain_timeout, lifespan="off")
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal under the handlers it found: make those
    # no-ops, so the process ends here with a summary line and status 0 instead of dying by the signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    left = state.engine.num_requests
    if left:
        state.engine.loop.wait_idle(5.0)
    if not server.started:
        raise TrtGptError(f"serve: could not listen on {host}:{port} (see the log above)")
    err_console.print(f"serve: stopped ({left} request(s) cut off by --drain_timeout)" if left
                      else "serve: stopped, every request finished")
