"""Test helpers for trt-gpt and for variant-package authors: tiny HF checkpoints, and parity checks
of an engine against HF transformers (the correctness oracle).

Imported only by tests; needs `transformers`, which is a core dependency anyway.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from .build import build
from .config import BuildConfig
from .convert import convert


def save_tiny(model_cls: Any, config: Any, path: str | Path, seed: int = 0) -> Any:
    """Instantiate `model_cls(config)` with a fixed seed, save it to `path` (safetensors) and return it."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(str(path))
    return model


def engine_from_checkpoint(src: str | Path, workdir: str | Path, dtype: str = "float32", variant: str | None = None,
                           tp_size: int = 1, pp_size: int = 1, **build_kw: Any) -> Path:
    """convert + build into `workdir/{ckpt,engine}`; returns the engine dir. `lora_dirs` and
    `lora_ckpt_source` go to build, the rest to BuildConfig."""
    workdir = Path(workdir)
    convert(src, workdir / "ckpt", dtype=dtype, variant=variant, tp_size=tp_size, pp_size=pp_size, overwrite=True)
    build_kw.setdefault("max_input_len", 64)
    build_kw.setdefault("tokens_per_block", 16)
    lora = {k: build_kw.pop(k) for k in ("lora_dirs", "lora_ckpt_source") if k in build_kw}
    build(workdir / "engine", BuildConfig(**build_kw), checkpoint_dir=workdir / "ckpt", overwrite=True, **lora)
    return workdir / "engine"


def hf_greedy(model: Any, prompt: Sequence[int], n: int) -> list[int]:
    """n greedy tokens from HF generate (eos suppressed so every run yields exactly n)."""
    ids = torch.tensor([list(prompt)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, num_beams=1, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def random_prompts(vocab: int, lengths: Sequence[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def assert_parity(hf_model: Any, engine_dir: str | Path, prompts: Sequence[Sequence[int]], n_greedy: int = 32,
                  atol: float = 1e-4, llm: Any = None) -> None:
    """Logits at every position within `atol` of HF, and `n_greedy` greedy tokens identical, with all
    prompts in one packed batch."""
    from .runtime.llm import LLM
    from .runtime.sampling_params import SamplingParams

    llm = llm or LLM(engine_dir, device="cpu")
    scores = llm.score(prompts)
    for p, got in zip(prompts, scores):
        with torch.no_grad():
            ref = hf_model(torch.tensor([list(p)])).logits[0].float()
        err = (ref - got).abs().max().item()
        assert err <= atol, f"logits differ from HF by {err:.3g} (> {atol}) for a prompt of {len(p)} tokens"
    # HF's min_new_tokens bans eos until n tokens exist; ask the same of ours so both yield exactly n
    eos = getattr(hf_model.generation_config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, list) and eos else eos
    eos = eos if eos is not None and 0 <= eos < llm.cfg.vocab_size else None
    params = SamplingParams(max_tokens=n_greedy, min_tokens=n_greedy if eos is not None else 0, end_id=eos)
    outs = llm.generate([list(p) for p in prompts], params)
    for p, o in zip(prompts, outs):
        ref = hf_greedy(hf_model, p, n_greedy)
        assert o.token_ids == ref, f"greedy tokens differ from HF for a prompt of {len(p)} tokens:\n{o.token_ids}\n{ref}"


def run_arrivals(llm: Any, prompts: Sequence[Sequence[int]], params: Sequence[Any], arrivals: Sequence[int],
                 max_steps: int = 2000) -> list[list[int]]:
    """Drive `llm` step by step, adding request i just before step `arrivals[i]`, until every request has
    finished; returns each request's output tokens (in-flight batching under a scripted arrival pattern)."""
    from .runtime.sequence import Status

    seqs: dict[int, Any] = {}
    step = 0
    while len(seqs) < len(prompts) or any(s.status is not Status.FINISHED for s in seqs.values()):
        for i, a in enumerate(arrivals):
            if a == step and i not in seqs:
                seqs[i] = llm.add_request(list(prompts[i]), params[i])
        llm.step()
        step += 1
        assert step < max_steps, "no progress"
    return [list(seqs[i].output_ids) for i in range(len(prompts))]


# ------------------------------------------------------------------ the CLI as a user types it
BIN = Path(sys.executable).parent / "trt-gpt"  # the console script of this environment


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRT_GPT_DEBUG", None)
    proc = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"trt-gpt {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout
    err = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err) == 1, proc.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


