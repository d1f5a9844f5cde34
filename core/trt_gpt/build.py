"""build: checkpoint dir (or a bare config: random weights drawn by the runtime) -> engine dir.

Validates every tensor's name, shape and dtype against the config, fixes the engine limits
(BuildConfig) and writes config.json {pretrained_config, build_config} + rank files + tokenizer files.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Sequence

from .checkpoint import (atomic_output_dir, copy_tokenizer_files, load_checkpoint_config, load_rank, save_rank,
                         tokenizer_files_in, torch_dtype, write_json)
from .config import BuildConfig, ModelConfig, read_json
from .convert import check_rank_tensors
from .errors import TrtGptError
from .lora.engine_dir import prepare_lora_build, read_loras, write_loras
from .support import check_supported

ENGINE_VERSION = "0.1"


def build(output_dir: str | Path, build_config: BuildConfig, checkpoint_dir: str | Path | None = None,
          model_config: ModelConfig | None = None, overwrite: bool = False,
          progress: Callable[[str], None] | None = None, workers: int = 1,
          lora_dirs: Sequence[str | Path] | None = None, lora_ckpt_source: str | None = None) -> ModelConfig:
    """Build from a checkpoint dir, or from `model_config` alone (random weights drawn at load time).

    `workers` > 1 builds that many ranks at a time in separate processes. `lora_dirs`: LoRA adapters (task
    uids 0, 1, ... in order) in `lora_ckpt_source` format (None: detected), converted into lora/<uid>/."""
    cfg = model_config if model_config is not None else load_checkpoint_config(checkpoint_dir)
    if checkpoint_dir is not None:
        # the variant names the source modules of adapters (lora/targets.py), at build and at run time
        cfg.extra.setdefault("variant", read_json(Path(checkpoint_dir) / "config.json").get("variant"))
    prepare_lora_build(build_config, lora_dirs)
    build_config.validate(cfg, "build")
    check_supported(cfg, build_config, str(Path(checkpoint_dir) / "config.json") if checkpoint_dir else "build")
    loras = read_loras(cfg, build_config, lora_dirs, lora_ckpt_source)
    if workers < 1:
        raise TrtGptError(f"build: --workers is {workers}, expected a positive integer")
    with atomic_output_dir(output_dir, overwrite) as tmp:
        if checkpoint_dir is not None:
            _build_ranks(Path(checkpoint_dir), tmp, cfg, workers, progress)
            copy_tokenizer_files(tokenizer_files_in(Path(checkpoint_dir)), tmp)
        write_loras(tmp, loras, progress)
        d = cfg.to_dict()
        d["mapping"].pop("rank", None)
        engine = {"version": ENGINE_VERSION, "pretrained_config": d, "build_config": build_config.to_dict()}
        if checkpoint_dir is None:
            engine["weights"] = "random"  # drawn on the device at load time (see runtime.engine)
        write_json(tmp / "config.json", engine)
    return cfg


def _build_rank(checkpoint_dir: Path, out_dir: Path, cfg: ModelConfig, rank: int) -> int:
    """Check one rank file against the config and write it into the engine dir; returns its tensor count."""
    rank_cfg = dataclasses.replace(cfg, mapping=cfg.mapping.with_rank(rank))
    tensors = load_rank(checkpoint_dir, rank)
    check_rank_tensors(tensors, rank_cfg, f"{checkpoint_dir / f'rank{rank}.safetensors'}", torch_dtype(cfg.dtype))
    save_rank(out_dir, rank, tensors)
    return len(tensors)


def _build_ranks(checkpoint_dir: Path, out_dir: Path, cfg: ModelConfig, workers: int,
                 progress: Callable[[str], None] | None) -> None:
    """Every rank, one after another or `workers` at a time; the first failure cancels the rest (the caller's
    atomic output dir then vanishes)."""
    ranks = range(cfg.mapping.world_size)
    report = progress or (lambda _msg: None)
    if workers == 1 or len(ranks) == 1:
        for rank in ranks:
            report(f"rank {rank}: {_build_rank(checkpoint_dir, out_dir, cfg, rank)} tensors checked")
        return
    # spawn, not fork: the parent may hold torch thread pools or CUDA state that a forked child cannot use
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(ranks)), mp_context=ctx) as pool:
        futures = {pool.submit(_build_rank, checkpoint_dir, out_dir, cfg, r): r for r in ranks}
        try:
            for fut in as_completed(futures):
                report(f"rank {futures[fut]}: {fut.result()} tensors checked")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
