"""convert: source checkpoint -> checkpoint dir (config.json + rank{r}.safetensors + tokenizer files)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import atomic_output_dir, copy_tokenizer_files, save_rank, torch_dtype, write_json
from .config import ModelConfig, QuantConfig
from .errors import TrtGptError
from .mapping import Mapping
from .model import expected_tensors
from .quant.registry import quantize_state
from .sources import open_source
from .support import check_supported
from .variants import resolve_variant
from .weights import rank_tensors


@dataclasses.dataclass
class ConvertResult:
    output_dir: Path
    variant: str
    config: ModelConfig
    num_tensors: int
    num_bytes: int


def check_rank_tensors(tensors: dict[str, torch.Tensor], cfg: ModelConfig, where: str,
                       dtype: torch.dtype | None = None) -> None:
    """Every expected tensor present with the expected shape (and dtype: `dtype` for the model's float tensors,
    a quantized layer's own for its integer weights and scales), nothing unexpected."""
    expected = expected_tensors(cfg)
    for name, (shape, fixed) in expected.items():
        if name not in tensors:
            raise TrtGptError(f"{where}: missing tensor '{name}' (expected shape {list(shape)})")
        if tuple(tensors[name].shape) != shape:
            raise TrtGptError(f"{where}: tensor '{name}' has shape {list(tensors[name].shape)}, the config implies "
                              f"{list(shape)}")
        want = fixed if fixed is not None else dtype
        if want is not None and tensors[name].dtype != want:
            raise TrtGptError(f"{where}: tensor '{name}' is {tensors[name].dtype}, expected {want}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise TrtGptError(f"{where}: unexpected tensor '{extra[0]}' not used by the model")


def convert(model_dir: str | Path, output_dir: str | Path, dtype: str = "float16", variant: str | None = None,
            tp_size: int = 1, pp_size: int = 1, overwrite: bool = False, use_parallel_embedding: bool = False,
            embedding_sharding_dim: int = 0, quantization: QuantConfig | None = None, stats: Any | None = None,
            progress: Callable[[str], None] | None = None) -> ConvertResult:
    src = open_source(model_dir)
    spec = resolve_variant(src, variant)
    cfg = spec.load_config(src)
    cfg.dtype = dtype
    if embedding_sharding_dim not in (0, 1):
        raise TrtGptError(f"--embedding_sharding_dim is {embedding_sharding_dim}, expected 0 or 1")
    # Tied tables with --embedding_sharding_dim 1: the lookup table is split on the hidden dim and lm_head
    # stays its own vocab-parallel copy of the same weights (lm_head.weight is always written), as the
    # reference does.
    cfg.use_parallel_embedding, cfg.embedding_sharding_dim = use_parallel_embedding, embedding_sharding_dim
    cfg.mapping = Mapping(world_size=tp_size * pp_size, tp_size=tp_size, pp_size=pp_size)
    if quantization is not None:
        cfg.quantization = quantization
    cfg.validate(f"{model_dir}")
    check_supported(cfg, where=f"{model_dir}")
    tdtype = torch_dtype(dtype)
    n_tensors = n_bytes = 0
    with atomic_output_dir(output_dir, overwrite) as tmp:
        for rank in range(cfg.mapping.world_size):
            mapping = cfg.mapping.with_rank(rank)
            rank_cfg = dataclasses.replace(cfg, mapping=mapping)
            tensors = dict(rank_tensors(spec.weights(src, cfg), cfg, mapping, tdtype))
            # quantizers transform a rank's whole sharded state dict (they need neighbours and statistics)
            tensors = quantize_state(tensors, rank_cfg, stats, f"{model_dir}")
            check_rank_tensors(tensors, rank_cfg, f"{model_dir} (rank {rank})")
            save_rank(tmp, rank, tensors)
            n_tensors += len(tensors)
            n_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
            if progress:
                progress(f"rank {rank}: {len(tensors)} tensors")
        d = cfg.to_dict()
        d["mapping"].pop("rank", None)
        d["variant"] = spec.name
        write_json(tmp / "config.json", d)
        copy_tokenizer_files(src.tokenizer_files(), tmp)
    return ConvertResult(Path(output_dir), spec.name, cfg, n_tensors, n_bytes)
