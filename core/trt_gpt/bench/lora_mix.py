"""The adapter mix of a benchmark: LoRA adapters registered in a running engine (random ones of a given rank
on every layer the engine's pool targets, or real ones from disk), the time that takes, and each request's
adapter (round robin over the mix)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import ModelConfig
from ..errors import TrtGptError
from ..lora.canonical import LoraAdapter, LoraModule, role_shape


def random_adapter(cfg: ModelConfig, rank: int, roles: Sequence[str], seed: int) -> LoraAdapter:
    """A rank-`rank` adapter on every layer and role, A and B ~ N(0, 0.02) (timing only: values do not matter)."""
    g = torch.Generator().manual_seed(seed)
    ad = LoraAdapter(f"random{seed}", source=f"random rank {rank}")
    for layer in range(cfg.num_hidden_layers):
        for role in roles:
            fin, fout = role_shape(cfg, role)
            ad.modules[(layer, role)] = LoraModule(torch.randn(rank, fin, generator=g) * 0.02,
                                                   torch.randn(fout, rank, generator=g) * 0.02, 1.0)
    return ad


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup_loras(llm: Any, num_loras: int, rank: int, lora_dirs: Sequence[Path] | None = None) -> tuple[list[str], dict]:
    """Register the mix in `llm`; returns the adapter names and the load timings (ms per adapter: `register`
    = read + shard + pin on the host, `slot_load` = copy into a pool slot on the device)."""
    lm = llm.lora
    if lm is None:
        raise TrtGptError("bench: the engine was built without LoRA (build it with --max_lora_rank and "
                          "--lora_target_modules to bench an adapter mix)")
    if lora_dirs:
        sources = [("dir", p) for p in lora_dirs]
    else:
        if num_loras < 1 or rank < 1:
            raise TrtGptError(f"bench: --num_loras ({num_loras}) and --lora_rank ({rank}) must be positive")
        sources = [("random", i) for i in range(num_loras)]
    names, register, slot_load = [], [], []
    device = lm.pool.token_slots.device
    for i, (kind, src) in enumerate(sources):
        name = f"bench{i}"
        t0 = time.perf_counter()
        if kind == "dir":
            llm.add_lora(name, src)
        else:
            lm.add(name, random_adapter(llm.cfg, rank, lm.pool.roles, seed=i))
        register.append(time.perf_counter() - t0)
        if i < lm.pool.num_slots:
            # one load into a free slot, as a request naming it triggers
            _sync(device)
            t0 = time.perf_counter()
            lm.pool.write(i, lm.weights[name])
            _sync(device)
            slot_load.append(time.perf_counter() - t0)
            lm.pool.write(i, {})
        names.append(name)
    mean = lambda xs: 1e3 * sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return names, {"num_loras": len(names), "rank": None if lora_dirs else rank, "slots": lm.pool.num_slots,
                   "register_ms": mean(register), "slot_load_ms": mean(slot_load)}
