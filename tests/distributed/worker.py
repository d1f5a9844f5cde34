"""Runs under `mpirun -np N` (or with torchrun-style variables): every rank loads each listed engine with
DistributedLLM; rank 0 scores and greedily generates the case's prompts and writes what it got, for the
pytest side to compare with the single-rank engine. A case may inject a fault into one rank.

usage: python worker.py SPEC.json   (SPEC: {"out": dir, "cases": [{name, engine, prompts, n_greedy,
       llm_kwargs?, micro_batches?, num_beams?, lora?, fault?: {rank, at_call, mode: exit|hang|raise}}]})
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from trt_gpt.runtime.distributed_llm import DistributedLLM
from trt_gpt.runtime.sampling_params import SamplingParams


def inject_fault(llm: DistributedLLM, fault: dict) -> None:
    """Make this rank's model die or hang at its n-th call (a crashed or wedged rank mid-generation)."""
    model, calls = llm.runner.model, [0]
    forward = model.forward

    def faulty(*args, **kwargs):
        calls[0] += 1
        if calls[0] == fault["at_call"]:
            if fault["mode"] == "exit":
                os._exit(3)
            if fault["mode"] == "hang":
                time.sleep(3600)
            raise RuntimeError("injected fault")
        return forward(*args, **kwargs)
    model.forward = faulty


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    results = {}
    for case in spec["cases"]:
        t0 = time.perf_counter()
        llm = DistributedLLM(case["engine"], device="cpu", micro_batches=case.get("micro_batches"),
                             **case.get("llm_kwargs", {}))
        fault = case.get("fault")
        if fault and fault["rank"] == llm.rank:
            inject_fault(llm, fault)
        if not llm.is_leader:
            llm.follow()
            continue
        prompts = case["prompts"]
        lora = case.get("lora")          # a LoRA task uid for every request (None: no adapter)
        scores = llm.score(prompts, lora=lora) if lora is not None else llm.score(prompts)
        outs = llm.generate(prompts, SamplingParams(max_tokens=case["n_greedy"], num_beams=case.get("num_beams", 1),
                                                    lora=lora))
        llm.shutdown()
        save_file({f"p{i}": s.contiguous() for i, s in enumerate(scores)}, str(out / f"{case['name']}.safetensors"))
        results[case["name"]] = {"tokens": [o.token_ids for o in outs], "beams": [o.beams for o in outs],
                                 "seconds": time.perf_counter() - t0,
                                 "steps": llm.runner.steps}
    if results:
        (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    torch.manual_seed(0)
    main(sys.argv[1])
    # as `trt-gpt` does after a multi-rank run: skip the native static teardown that now and again aborts
    from trt_gpt.distributed import exit_after_run
    exit_after_run(0)
