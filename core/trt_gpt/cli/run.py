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
from .common import (DEFAULT_PROMPT, check_device, check_dir, check_output_file, err_console, kv_cache_line,
                     write_output_file)
from .prompt_tuning import apply_prompt_tuning, prompt_tables


def read_input_file(path: Path) -> list:
    """Prompts from .txt (one per line), .json (list of strings or id lists) or .csv (token ids a row)."""
    if path.is_dir():
        raise TrtGptError(f"--input_file {path}: is a directory, expected a file")
    if not path.is_file():
        raise TrtGptError(f"--input_file {path}: no such file")
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
    engine_dir: Path = typer.Option(..., "--engine_dir", help="Engine directory from `trt-gpt build`."),
    tokenizer_dir: Optional[Path] = typer.Option(None, "--tokenizer_dir",
                                                 help="Default: the tokenizer files in the engine dir."),
    vocab_file: Optional[Path] = typer.Option(None, "--vocab_file", help="A sentencepiece model."),
    input_text: Optional[list[str]] = typer.Option(None, "--input_text",
                                                   help=f'Prompts; default "{DEFAULT_PROMPT}".'),
    input_file: Optional[Path] = typer.Option(None, "--input_file",
                                              help=".txt (a prompt a line), .json or .csv (token ids)."),
    max_input_length: int = typer.Option(923, "--max_input_length", help="Prompt tokens kept."),
    max_output_len: int = typer.Option(..., "--max_output_len", help="Tokens to generate."),
    no_add_special_tokens: bool = typer.Option(False, "--no_add_special_tokens",
                                               help="Tokenize prompts without BOS/special tokens."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    top_k: int = typer.Option(1, "--top_k", help="Top-k sampling (1: greedy)."),
    top_p: float = typer.Option(0.0, "--top_p", help="Top-p sampling (0: off)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition_penalty", help="Repetition penalty."),
    presence_penalty: float = typer.Option(0.0, "--presence_penalty", help="Presence penalty."),
    frequency_penalty: float = typer.Option(0.0, "--frequency_penalty", help="Frequency penalty."),
    num_beams: int = typer.Option(1, "--num_beams", help="Beam search width."),
    length_penalty: float = typer.Option(1.0, "--length_penalty", help="Beam search length penalty."),
    early_stopping: int = typer.Option(1, "--early_stopping", help="Beam search: 1 or 0."),
    stop_words: Optional[list[str]] = typer.Option(None, "--stop_words", help="Words that end generation."),
    bad_words: Optional[list[str]] = typer.Option(None, "--bad_words", help="Words never generated."),
    end_id: Optional[int] = typer.Option(None, "--end_id", help="Default: the tokenizer's EOS."),
    random_seed: Optional[int] = typer.Option(None, "--random_seed", help="Seed of the sampler."),
    streaming: bool = typer.Option(False, "--streaming", help="Print the text as tokens arrive."),
    max_attention_window_size: Optional[int] = typer.Option(
        None, "--max_attention_window_size", help="Attention window for these requests (overrides the model's)."),
    kv_cache_free_gpu_memory_fraction: float = typer.Option(
        0.9, "--kv_cache_free_gpu_memory_fraction", help="Share of free memory for the KV cache."),
    max_tokens_in_paged_kv_cache: Optional[int] = typer.Option(None, "--max_tokens_in_paged_kv_cache",
                                                               help="KV cache size in tokens."),
    output_csv: Optional[Path] = typer.Option(None, "--output_csv", help="Output token ids, a row per prompt and beam."),
    context_fmha_fp32_acc: bool = typer.Option(
        True, "--enable_context_fmha_fp32_acc/--disable_context_fmha_fp32_acc",
        help="fp32 accumulation in the fused prompt attention on GPU (on by default: the accurate choice)."),
    use_py_session: bool = typer.Option(False, "--use_py_session",
                                        help="Accepted for the reference's commands; there is one runtime."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print ids and text as JSON."),
    # ---- LoRA (docs/lora.md)
    lora_task_uids: Optional[list[str]] = typer.Option(
        None, "--lora_task_uids", help="The engine's LoRA task uid of each input (-1: none)."),
    # ---- prompt tuning (docs/prompt-tuning.md)
    prompt_table_path: Optional[Path] = typer.Option(
        None, "--prompt_table_path",
        help=".npy [tasks, virtual_tokens, hidden], a PEFT prompt-tuning dir or a NeMo p-tuning .nemo."),
    prompt_tasks: Optional[str] = typer.Option(None, "--prompt_tasks",
                                               help="Table task of each input, comma-separated (default 0)."),
    num_prepend_vtokens: Optional[list[int]] = typer.Option(
        None, "--num_prepend_vtokens",
        help="Virtual tokens vocab_size.. put before each input (default: the task's whole table)."),
) -> None:
    """Generate text from prompts with an engine."""
    from ..runtime.llm import LLM
    from ..runtime.sampling_params import SamplingParams
    from ..runtime.distributed_llm import llm_factory

    check_device(device)
    check_dir(tokenizer_dir, "--tokenizer_dir")
    check_output_file(output_csv, "--output_csv")
    if use_py_session:
        err_console.print("note: --use_py_session changes nothing: trt-gpt has one runtime", highlight=False)
    if max_input_length < 1:
        raise TrtGptError(f"--max_input_length is {max_input_length}, expected a positive integer")
    if early_stopping not in (0, 1):
        raise TrtGptError(f"--early_stopping is {early_stopping}, expected 1 or 0")
    prompts: list = list(input_text or [])
    if input_file is not None:
        prompts += read_input_file(input_file)
    if not prompts:
        prompts = [DEFAULT_PROMPT]
    LLM = llm_factory(LLM)  # noqa: N806  mpirun/srun: ranks > 0 serve rank 0 in here and exit, rank 0 prints
    llm = LLM(engine_dir, device=device, tokenizer_dir=tokenizer_dir, vocab_file=vocab_file,
              kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
              max_tokens_in_paged_kv_cache=max_tokens_in_paged_kv_cache,
              context_fmha_fp32_acc=context_fmha_fp32_acc, prompt_tables=prompt_tables(prompt_table_path))
    needs_text = any(isinstance(p, str) for p in prompts) or bool(stop_words or bad_words)
    tok = text_tokenizer(llm, engine_dir, needs_text, tokenizer_dir is not None or vocab_file is not None)
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
    ids, params = apply_prompt_tuning(llm, ids, params, prompt_table_path, prompt_tasks, num_prepend_vtokens)

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
                    print(f'Output [Text {i} Beam {k}]: {tok.show(b)}', flush=True)
            if out.finished:
                finals[out.request_id] = out
        outs = [finals[r] for r in llm.last_request_ids]
    else:
        outs = llm.generate(ids, params)
    results = []
    limit = llm.build.max_seq_len
    for p, i_ids, o in zip(prompts, ids, outs):
        beams = beams_of(o)
        cut = o.finish_reason == "length" and len(o.token_ids) < max_output_len and len(i_ids) + len(
            o.token_ids) >= limit
        results.append({"input_text": p if isinstance(p, str) else tok.decode(p), "input_ids": i_ids,
                        "output_ids": o.token_ids, "output_text": tok.decode(o.token_ids),
                        "finish_reason": o.finish_reason, "truncated_by_max_seq_len": cut, "beams": [
                            {"output_ids": b, "output_text": tok.decode(b)} for b in beams]})
        if o.beam_scores is not None:
            for b, s in zip(results[-1]["beams"], o.beam_scores):
                b["score"] = s
    if as_json:
        print(json.dumps(results, indent=2))
    elif not streaming:
        for i, r in enumerate(results):
            print(f'Input [Text {i}]: {tok.show(r["input_ids"]) if r["input_text"] is None else quote(r["input_text"])}')
            for k, b in enumerate(r["beams"]):
                print(f'Output [Text {i} Beam {k}]: {tok.show(b["output_ids"])}')
    err_console.print(kv_cache_line(llm), highlight=False, soft_wrap=True)   # after the work: errors stay one line
    cut = [i for i, r in enumerate(results) if r["truncated_by_max_seq_len"]]
    if cut:
        err_console.print(f"warning: output {', '.join(map(str, cut))} cut short at the engine's max_seq_len {limit} "
                          f"(prompt + output); asked for {max_output_len} tokens; rebuild with a larger --max_seq_len",
                          highlight=False, soft_wrap=True)
    if output_csv is not None:
        write_output_file(output_csv, lambda f: csv.writer(f).writerows(
            b["output_ids"] for r in results for b in r["beams"]), newline="")


def quote(text: str) -> str:
    return f'"{text}"'


class _IdsOnly:
    """Stands in for a tokenizer when an engine has none and every prompt is token ids: outputs are ids."""
    eos_token_id = None

    def decode(self, ids: list[int]) -> None:
        return None

    def show(self, ids: list[int]) -> str:
        return str(list(ids))


class _Shown:
    """A tokenizer whose `show` prints decoded text in quotes, as the reference's run.py does."""

    def __init__(self, tok):
        self.tok = tok
        self.eos_token_id = tok.eos_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def show(self, ids: list[int]) -> str:
        return quote(self.tok.decode(ids))


TOKENIZER_MARKERS = ("tokenizer.json", "vocab.json", "tokenizer_config.json", "tokenizer.model")


def text_tokenizer(llm, engine_dir: Path, needs_text: bool, given: bool):
    """The engine's tokenizer; without one (random-weight engines), token-id prompts run and print ids."""
    if given or any((Path(engine_dir) / f).is_file() for f in TOKENIZER_MARKERS):
        return _Shown(llm.tokenizer)
    if needs_text:
        raise TrtGptError(f"{engine_dir}: the engine has no tokenizer, and text prompts (including the default "
                          "prompt) need one: pass --tokenizer_dir, or give token ids with --input_file ids.csv")
    return _IdsOnly()
