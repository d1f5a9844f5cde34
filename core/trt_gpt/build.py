"""build: checkpoint dir (or a bare config for random weights) -> engine dir.

Validates every tensor's name, shape and dtype against the config, fixes the engine limits
(BuildConfig) and writes config.json {pretrained_config, build_config} + rank files + tokenizer files.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import (atomic_output_dir, copy_tokenizer_files, load_checkpoint_config, load_rank, save_rank,
                         tokenizer_files_in, torch_dtype, write_json)
from .config import BuildConfig, ModelConfig
from .convert import check_rank_tensors
from .model import expected_tensors

ENGINE_VERSION = "0.1"


def random_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights for benchmarking from a config alone: small normal values, norms at 1 (0 for layernorm1p)."""
    g = torch.Generator().manual_seed(seed + cfg.mapping.rank)
    dtype = torch_dtype(cfg.dtype)
    out = {}
    for name, shape in expected_tensors(cfg).items():
        if "layernorm" in name or "ln_f" in name:
            fill = 0.0 if (name.endswith("bias") or cfg.norm_type == "layernorm1p") else 1.0
            out[name] = torch.full(shape, fill, dtype=dtype)
        else:
            out[name] = (torch.randn(shape, generator=g) * 0.02).to(dtype)
    return out


def build(output_dir: str | Path, build_config: BuildConfig, checkpoint_dir: str | Path | None = None,
          model_config: ModelConfig | None = None, overwrite: bool = False,
          progress: Callable[[str], None] | None = None) -> ModelConfig:
    """Build from a checkpoint dir, or from `model_config` with random weights."""
    cfg = model_config if model_config is not None else load_checkpoint_config(checkpoint_dir)
    build_config.validate(cfg, "build")
    dtype = torch_dtype(cfg.dtype)
    with atomic_output_dir(output_dir, overwrite) as tmp:
        for rank in range(cfg.mapping.world_size):
            rank_cfg = dataclasses.replace(cfg, mapping=cfg.mapping.with_rank(rank))
            if checkpoint_dir is not None:
                tensors = load_rank(checkpoint_dir, rank)
                check_rank_tensors(tensors, rank_cfg, f"{Path(checkpoint_dir) / f'rank{rank}.safetensors'}", dtype)
            else:
                tensors = random_weights(rank_cfg)
            save_rank(tmp, rank, tensors)
            if progress:
                progress(f"rank {rank}: {len(tensors)} tensors")
        d = cfg.to_dict()
        d["mapping"].pop("rank", None)
        write_json(tmp / "config.json", {"version": ENGINE_VERSION, "pretrained_config": d,
                                         "build_config": build_config.to_dict()})
        if checkpoint_dir is not None:
            copy_tokenizer_files(tokenizer_files_in(Path(checkpoint_dir)), tmp)
    return cfg
