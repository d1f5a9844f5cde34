"""`trt-gpt run`: generate from an engine, printing like the reference run.py (or JSON / CSV).

Prompts come from `--input_text` and/or `--input_file` (.txt one prompt a line, .json a list of
strings or token-id lists, .csv token ids a row). Text is truncated to its first `--max_input_length`
tokens and token-id rows to their last, as the reference does. Every beam is printed as
`Output [Text i Beam k]`; `--streaming` prints each request's text so far as tokens arrive.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import TrtGptError


def read_input_file(path: Path) -> list:
    """Prompts from .txt (one per line), .json (list of strings or id lists) or .csv (token ids a row)."""
    if not path.is_file():
        raise TrtGptError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TrtGptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TrtGptError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, list) or not all(isinstance(x, str) or (isinstance(x, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in x)) for x in data):
            raise TrtGptError(f"{path}: expected a JSON list of strings or of token-id lists")
        return data
    if suffix == ".csv":
        rows = []
        for i, row in enumerate(csv.reader(text.splitlines()), 1):
            try:
                rows.append([int(t) for t in row if t.strip()])
            except ValueError:
                raise TrtGptError(f"{path}: line {i}: expected comma-separated token ids") from None
        return [r for r in rows if r]
    if suffix not in (".txt", ""):
        raise TrtGptError(f"{path}: unsupported input file type '{suffix}' (expected .txt, .json or .csv)")
    return [line for line in text.splitlines() if line.strip()]


def run_cmd(
    engine_dir: Path = typer.Option(..., "--engine_dir", "--engine-dir"),
    tokenizer_dir: Optional[Path] = typer.Option(None, "--tokenizer_dir", "--tokenizer-dir"),
    vocab_file: Optional[Path] = typer.Option(None, "--vocab_file", "--vocab-file", help="sentencepiece model."),
    input_text: Optional[list[str]] = typer.Option(None, "--input_text", "--input-text"),
    input_file: Optional[Path] = typer.Option(None, "--input_file", "--input-file",
                                              help=".txt (a prompt a line), .json or .csv (token ids)."),
    max_input_length: int = typer.Option(923, "--max_input_length", "--max-input-length"),
    max_output_len: int = typer.Option(..., "--max_output_len", "--max-output-len"),
    no_add_special_tokens: bool = typer.Option(False, "--no_add_special_tokens", "--no-add-special-tokens"),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_k: int = typer.Option(1, "--top_k", "--top-k"),
    top_p: float = typer.Option(0.0, "--top_p", "--top-p"),
    repetition_penalty: float = typer.Option(1.0, "--repetition_penalty", "--repetition-penalty"),
    presence_penalty: float = typer.Option(0.0, "--presence_penalty", "--presence-penalty"),
    frequency_penalty: float = typer.Option(0.0, "--frequency_penalty", "--frequency-penalty"),
    num_beams: int = typer.Option(1, "--num_beams", "--num-beams"),
    length_penalty: float = typer.Option(1.0, "--length_penalty", "--length-penalty"),
    early_stopping: int = typer.Option(1, "--early_stopping", "--early-stopping", help="Beam search: 1 or 0."),
    stop_words: Optional[list[str]] = typer.Option(None, "--stop_words", "--stop-words"),
    bad_words: Optional[list[str]] = typer.Option(None, "--bad_words", "--bad-words"),
    end_id: Optional[int] = typer.Option(None, "--end_id", "--end-id", help="Default: the tokenizer's EOS."),
    random_seed: Optional[int] = typer.Option(None, "--random_seed", "--random-seed"),
    streaming: bool = typer.Option(False, "--streaming"),
    max_attention_window_size: Optional[int] = typer.Option(None, "--max_attention_window_size",
                                                            "--max-attention-window-size"),
    kv_cache_free_gpu_memory_fraction: float = typer.Option(0.9, "--kv_cache_free_gpu_memory_fraction",
                                                            "--kv-cache-free-gpu-memory-fraction"),
    max_tokens_in_paged_kv_cache: Optional[int] = typer.Option(None, "--max_tokens_in_paged_kv_cache",
                                                               "--max-tokens-in-paged-kv-cache"),
    output_csv: Optional[Path] = typer.Option(None, "--output_csv", "--output-csv",
                                              help="Output token ids, a row per prompt and beam."),
    context_fmha_fp32_acc: bool = typer.Option(
        True, "--enable_context_fmha_fp32_acc/--disable_context_fmha_fp32_acc",
        help="fp32 accumulation in the fused prefill attention on GPU (on by default: the accurate choice)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print ids and text as JSON."),
    # ---- LoRA (docs/lora.md)
    lora_task_uids: Optional[list[str]] = typer.Option(
        None, "--lora_task_uids", "--lora-task-uids", help="The engine's LoRA task uid of each input (-1: none)."),
    prompt_table_path: Optional[Path] = typer.Option(
        None, "--prompt_table_path", "--prompt-table-path", help=".npy [tasks, tokens, hidden] or a PEFT prompt dir."),
    prompt_tasks: Optional[str] = typer.Option(None, "--prompt_tasks", "--prompt-tasks",
                                               help="Task of each input, comma-separated (default 0)."),
    num_prepend_vtokens: Optional[list[int]] = typer.Option(
        None, "--num_prepend_vtokens", "--num-prepend-vtokens",
        help="Virtual tokens put before each input (default: its task's whole table)."),
) -> None:
    """Generate text from prompts with an engine."""
    from ..runtime.llm import LLM
    from ..runtime.sampling_params import SamplingParams
    from ..runtime.distributed_llm import llm_factory

    LLM = llm_factory(LLM)  # noqa: N806  mpirun/srun: ranks > 0 serve rank 0 in here and exit, rank 0 prints

    if max_input_length < 1:
        raise TrtGptError(f"--max_input_length is {max_input_length}, expected a positive integer")
    if early_stopping not in (0, 1):
        raise TrtGptError(f"--early_stopping is {early_stopping}, expected 1 or 0")
    prompts: list = list(input_text or [])
    if input_file is not None:
        prompts += read_input_file(input_file)
    if not prompts:
        raise TrtGptError("run: no prompts (give --input_text or --input_file)")
    llm = LLM(engine_dir, device=device, tokenizer_dir=tokenizer_dir, vocab_file=vocab_file,
              kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
              max_tokens_in_paged_kv_cache=max_tokens_in_paged_kv_cache,
              context_fmha_fp32_acc=context_fmha_fp32_acc)
    tok = llm.tokenizer
    add_special = not no_add_special_tokens
    ids = [tok.encode(p, add_special)[:max_input_length] if isinstance(p, str) else p[-max_input_length:]
           for p in prompts]

    def words(ws: Optional[list[str]]) -> Optional[list[list[int]]]:
        return [tok.encode(w, False) for w in ws] if ws else None

    params = SamplingParams(
        max_tokens=max_output_len, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, num_beams=num_beams, length_penalty=length_penalty,
        early_stopping=bool(early_stopping), stop_words=words(stop_words), bad_words=words(bad_words),
        end_id=end_id if end_id is not None else tok.eos_token_id, seed=random_seed,
        max_attention_window_size=max_attention_window_size)

    if prompt_table_path is not None:
        ids, params = _prompt_tuning(llm, ids, params, prompt_table_path, prompt_tasks, num_prepend_vtokens)
    elif prompt_tasks or num_prepend_vtokens:
        raise TrtGptError("--prompt_tasks / --num_prepend_vtokens need --prompt_table_path")
    if lora_task_uids:
        if len(lora_task_uids) != len(ids):
            raise TrtGptError(f"--lora_task_uids: {len(lora_task_uids)} uids for {len(ids)} inputs (one per input)")
        params = [dataclasses.replace(p, lora=u)
                  for p, u in zip(params if isinstance(params, list) else [params] * len(ids), lora_task_uids)]

    def beams_of(out) -> list[list[int]]:
        return out.beams if out.beams is not None else [out.token_ids]

    if streaming:
        finals = {}
        for out in llm.generate_stream(ids, params):
            i = llm.last_request_ids.index(out.request_id)
            if not as_json:
                for k, b in enumerate(beams_of(out)):
                    print(f'Output [Text {i} Beam {k}]: "{tok.decode(b)}"', flush=True)
            if out.finished:
                finals[out.request_id] = out
        outs = [finals[r] for r in llm.last_request_ids]
    else:
        outs = llm.generate(ids, params)
    results = []
    for p, i_ids, o in zip(prompts, ids, outs):
        beams = beams_of(o)
        results.append({"input_text": p if isinstance(p, str) else tok.decode(p), "input_ids": i_ids,
                        "output_ids": o.token_ids, "output_text": tok.decode(o.token_ids),
                        "finish_reason": o.finish_reason, "beams": [
                            {"output_ids": b, "output_text": tok.decode(b)} for b in beams]})
        if o.beam_scores is not None:
            for b, s in zip(results[-1]["beams"], o.beam_scores):
                b["score"] = s
    if as_json:
        print(json.dumps(results, indent=2))
    elif not streaming:
        for i, r in enumerate(results):
            print(f'Input [Text {i}]: "{r["input_text"]}"')
            for k, b in enumerate(r["beams"]):
                print(f'Output [Text {i} Beam {k}]: "{b["output_text"]}"')
    if output_csv is not None:
        output_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(output_csv, "w", newline="") as f:
            csv.writer(f).writerows(b["output_ids"] for r in results for b in r["beams"])


def _prompt_tuning(llm, ids: list, params, path: Path, tasks: Optional[str], prepend: Optional[list[int]]):
    """Every task of the table file added to the engine; each input gets its task's table and, as the
    reference's run.py does with --num_prepend_vtokens, virtual tokens vocab_size.. put before it."""
    from ..lora.prompt_loading import load_prompt_tables

    tables = load_prompt_tables(path)
    for i, t in enumerate(tables):
        llm.add_prompt_table(str(i), t)
    try:
        task_ids = [int(t) for t in tasks.split(",")] if tasks else [0] * len(ids)
    except ValueError:
        raise TrtGptError(f"--prompt_tasks is {tasks!r}, expected comma-separated task indices") from None
    if len(task_ids) != len(ids) or not all(0 <= t < len(tables) for t in task_ids):
        raise TrtGptError(f"--prompt_tasks: {tasks!r} must name one of the {len(tables)} task(s) for each of the "
                          f"{len(ids)} inputs")
    counts = prepend or [tables[t].shape[0] for t in task_ids]
    if len(counts) != len(ids):
        raise TrtGptError(f"--num_prepend_vtokens: {len(counts)} counts for {len(ids)} inputs (one per input)")
    vocab = llm.cfg.vocab_size
    ids = [list(range(vocab, vocab + n)) + list(i) for n, i in zip(counts, ids)]
    return ids, [dataclasses.replace(params, prompt_table=str(t)) for t in task_ids]
