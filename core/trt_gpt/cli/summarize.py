"""`trt-gpt summarize`: the reference summarize.py workflow — summarize news articles with the engine
and/or HF transformers, then ROUGE against the reference highlights, latency and tokens/s side by
side; or `--eval_task eval_context_ppl`: the perplexity of each article under both.

Inputs follow the reference: prompt = `article + " TL;DR: "`, stripped, " n't" joined, tokenized and
cut to its first `--max_input_length` tokens; greedy by default; outputs end at the tokenizer's EOS.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import TrtGptError
from .common import check_device, check_dir, err_console, out_console

TASKS = ("summarize", "eval_context_ppl")


def prompt_text(article: str, task: str) -> str:
    """The reference's input text for an article."""
    text = article + (" TL;DR: " if task == "summarize" else "")
    return text.strip().replace(" n't", "n't")


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


DATA_TYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "float32": "float32", "float16": "float16",
              "bfloat16": "bfloat16"}


def builtin_dataset() -> Path:
    """The sample shipped in the package: five CNN articles with their highlights (see eval/data/README.md)."""
    return Path(__file__).resolve().parent.parent / "eval" / "data" / "cnn_sample.jsonl"


def summarize_cmd(
    engine_dir: Optional[Path] = typer.Option(None, "--engine_dir", help="Engine directory to evaluate."),
    hf_model_dir: Optional[Path] = typer.Option(None, "--hf_model_dir", help="HF checkpoint to compare with."),
    tokenizer_dir: Optional[Path] = typer.Option(None, "--tokenizer_dir",
                                                 help="Default: --hf_model_dir, else the engine dir."),
    test_trt_llm: bool = typer.Option(False, "--test_trt_llm", help="Evaluate the engine."),
    test_hf: bool = typer.Option(False, "--test_hf", help="Evaluate HF transformers."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="JSONL with 'article' and 'highlights' fields; "
                                           "default: five CNN articles shipped with trt-gpt."),
    eval_task: str = typer.Option("summarize", "--eval_task", help="summarize or eval_context_ppl."),
    max_ite: int = typer.Option(20, "--max_ite", help="Batches to evaluate."),
    batch_size: int = typer.Option(1, "--batch_size", help="Articles a batch."),
    output_len: int = typer.Option(100, "--output_len", help="Tokens to generate an article."),
    max_input_length: int = typer.Option(923, "--max_input_length", help="Article tokens kept."),
    num_beams: int = typer.Option(1, "--num_beams", help="Beam search width."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    top_k: int = typer.Option(1, "--top_k", help="Top-k sampling (1: greedy)."),
    top_p: float = typer.Option(0.0, "--top_p", help="Top-p sampling (0: off)."),
    length_penalty: float = typer.Option(1.0, "--length_penalty", help="Beam search length penalty."),
    repetition_penalty: float = typer.Option(1.0, "--repetition_penalty", help="Repetition penalty."),
    random_seed: Optional[int] = typer.Option(None, "--random_seed", help="Seed of the sampler."),
    max_attention_window_size: Optional[int] = typer.Option(
        None, "--max_attention_window_size", help="The engine's attention window (overrides the model's)."),
    check_accuracy: bool = typer.Option(False, "--check_accuracy", help="Fail below the thresholds."),
    rouge1_threshold: float = typer.Option(15.0, "--rouge1_threshold", "--tensorrt_llm_rouge1_threshold",
                                           help="Lowest ROUGE-1 --check_accuracy accepts."),
    ppl_threshold: float = typer.Option(15.0, "--ppl_threshold", "--tensorrt_llm_ppl_threshold",
                                        help="Highest perplexity --check_accuracy accepts."),
    hf_dtype: str = typer.Option("auto", "--hf_dtype", help="auto (engine dtype on GPU, float32 on CPU), "
                                                          "float32, float16 or bfloat16."),
    data_type: Optional[str] = typer.Option(None, "--data_type",
                                            help="The reference's name for --hf_dtype: fp32, fp16 or bf16."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Summarize articles (or score their perplexity) with the engine and HF, ROUGE and speed side by side.

    Without --test_trt_llm / --test_hf: the engine, and HF beside it when --hf_model_dir is given.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..eval.dataset import read_jsonl
    from ..eval.metrics import ROUGE_TYPES, perplexity, rouge
    from ..eval.runners import EngineRunner, HFRunner, SideStats
    from ..runtime.sampling_params import SamplingParams
    from ..runtime.tokenizer import load_tokenizer

    check_device(device)
    check_dir(tokenizer_dir, "--tokenizer_dir")
    if data_type is not None:
        if data_type not in DATA_TYPES:
            raise TrtGptError(f"--data_type is '{data_type}', expected one of {', '.join(DATA_TYPES)}")
        hf_dtype = DATA_TYPES[data_type]
    if dataset is None:
        dataset = builtin_dataset()
        err_console.print(f"no --dataset: the {sum(1 for _ in open(dataset))} CNN articles shipped with trt-gpt",
                          highlight=False, soft_wrap=True)
    if eval_task not in TASKS:
        raise TrtGptError(f"--eval_task is '{eval_task}', expected one of {', '.join(TASKS)}")
    for name, v in (("--max_ite", max_ite), ("--batch_size", batch_size), ("--output_len", output_len),
                    ("--max_input_length", max_input_length)):
        if v < 1:
            raise TrtGptError(f"{name} is {v}, expected a positive integer")
    if not (test_trt_llm or test_hf):
        # Neither asked: the engine, and HF next to it when its checkpoint is given.
        test_trt_llm, test_hf = True, hf_model_dir is not None
    if test_trt_llm and engine_dir is None:
        raise TrtGptError("--test_trt_llm needs --engine_dir")
    if test_hf and hf_model_dir is None:
        raise TrtGptError("--test_hf needs --hf_model_dir")

    records = read_jsonl(dataset, limit=max_ite * batch_size)
    tok = load_tokenizer(tokenizer_dir or hf_model_dir or engine_dir)
    ids = [tok.encode(prompt_text(r["article"], eval_task))[:max_input_length] for r in records]
    params = SamplingParams(max_tokens=output_len, num_beams=num_beams, temperature=temperature, top_k=top_k,
                            top_p=top_p, length_penalty=length_penalty, repetition_penalty=repetition_penalty,
                            seed=random_seed, end_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                            max_attention_window_size=max_attention_window_size).validate()

    runners = []
    if test_trt_llm:
        eng = EngineRunner(engine_dir, device, tokenizer_dir)
        for rec, i in zip(records, ids):
            if len(i) > eng.max_input_len:
                raise TrtGptError(f"{dataset}: line {rec['_line']}: {len(i)} input tokens exceed the engine's "
                                  f"max_input_len ({eng.max_input_len}); lower --max_input_length")
        runners.append(eng)
    if test_hf:
        engine_dtype = runners[0].llm.cfg.dtype if runners else None
        runners.append(HFRunner(hf_model_dir, device, hf_dtype, engine_dtype))

    stats = {r.name: SideStats(r.name) for r in runners}
    batches = _batches(ids, batch_size)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        for runner in runners:
            st = stats[runner.name]
            task = bar.add_task(f"{runner.name} {eval_task}", total=len(batches))
            # One untimed warm-up call, so one-off initialisation does not count against whichever side runs first.
            if eval_task == "summarize":
                runner.generate(batches[0][:1], dataclasses.replace(params, max_tokens=1, min_tokens=0))
            else:
                runner.logits(batches[0][:1])
            for batch in batches:
                if eval_task == "summarize":
                    outs, secs = runner.generate(batch, params)
                    st.outputs += outs
                else:
                    logits, secs = runner.logits(batch)
                    st.ppls += [perplexity(lg, b) for lg, b in zip(logits, batch)]
                st.seconds += secs
                st.batches += 1
                bar.advance(task)

    results: dict = {"task": eval_task, "articles": len(ids), "batch_size": batch_size}
    for name, st in stats.items():
        side: dict = {"seconds": st.seconds, "latency_ms": st.latency_ms}
        if eval_task == "summarize":
            texts = [tok.decode(o).strip() for o in st.outputs]
            side.update(rouge(texts, [r["highlights"] for r in records]), tokens=st.tokens,
                        tokens_per_second=st.tokens_per_second, outputs=st.outputs, texts=texts)
        else:
            side.update(perplexity=sum(st.ppls) / len(st.ppls), perplexities=st.ppls,
                        tokens=sum(len(i) for i in ids), tokens_per_second=sum(len(i) for i in ids) / st.seconds
                        if st.seconds else 0.0)
        results[name] = side

    failures = []
    if check_accuracy:
        for name in stats:
            if eval_task == "summarize" and results[name]["rouge1"] < rouge1_threshold:
                failures.append(f"{name} ROUGE-1 {results[name]['rouge1']:.3f} < --rouge1_threshold "
                                f"{rouge1_threshold:g}")
            if eval_task == "eval_context_ppl" and results[name]["perplexity"] > ppl_threshold:
                failures.append(f"{name} perplexity {results[name]['perplexity']:.3f} > --ppl_threshold "
                                f"{ppl_threshold:g}")
    results["check_accuracy"] = None if not check_accuracy else not failures

    if as_json:
        print(json.dumps(results, indent=2))
    else:
        _print_table(results, list(stats), eval_task, ROUGE_TYPES)
    if failures:
        raise TrtGptError("check_accuracy failed: " + "; ".join(failures))
    summary = ", ".join(
        f"{n} " + (f"ROUGE-1 {results[n]['rouge1']:.2f}" if eval_task == "summarize" else
                   f"perplexity {results[n]['perplexity']:.3f}") + f" ({results[n]['tokens_per_second']:.1f} tok/s)"
        for n in stats)
    check = "; check_accuracy passed" if check_accuracy else ""
    err_console.print(f"{eval_task}: {len(ids)} articles, {summary}{check}", highlight=False, soft_wrap=True)


def _print_table(results: dict, sides: list[str], task: str, rouge_types: tuple[str, ...]) -> None:
    from rich.table import Table

    table = Table(title=f"{task}: {results['articles']} articles, batch size {results['batch_size']}")
    table.add_column("metric")
    for s in sides:
        table.add_column(s, justify="right")
    rows = list(rouge_types) if task == "summarize" else ["perplexity"]
    for key in rows + ["tokens", "seconds", "latency_ms", "tokens_per_second"]:
        vals = [results[s][key] for s in sides]
        table.add_row(key, *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in vals))
    out_console.print(table)
