"""LoRA adapters at build: read each `--lora_dir` in its source format, check it against the base model and
the engine's limits, and write it in canonical form into the engine dir as lora/<task uid>/."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..config import BuildConfig, ModelConfig
from ..errors import TrtGptError
from .canonical import ROLES, TARGET_MODULES, LoraAdapter, roles_for_targets, save
from .loading import load_lora

DEFAULT_MAX_RANK = 64   # the reference's --max_lora_rank default
_ROLE_TARGET = {"qkv": "attn_qkv", "dense": "attn_dense", "fc": "mlp_h_to_4h", "gate": "mlp_gate", "proj": "mlp_4h_to_h"}


def prepare_lora_build(build: BuildConfig, lora_dirs: Sequence[str | Path] | None) -> None:
    """Fill in the LoRA limits a `--lora_dir` implies before the engine's support check."""
    if lora_dirs and not build.max_lora_rank:
        build.max_lora_rank = DEFAULT_MAX_RANK
    if build.max_lora_rank < 0:
        raise TrtGptError(f"build: 'max_lora_rank' is {build.max_lora_rank}, expected an integer >= 0")
    if build.lora_target_modules:
        roles_for_targets(build.lora_target_modules)
        if not build.max_lora_rank:
            raise TrtGptError("--lora_target_modules needs --max_lora_rank (or --lora_dir)")


def read_loras(cfg: ModelConfig, build: BuildConfig, lora_dirs: Sequence[str | Path] | None,
               source: str | None) -> list[LoraAdapter]:
    """Every adapter read and checked (before anything is written), task uid i for the i-th; fixes the
    engine's LoRA targets to the roles they use when none were given."""
    if not lora_dirs:
        return []
    roles = roles_for_targets(build.lora_target_modules) if build.lora_target_modules else ROLES
    adapters = [load_lora(p, cfg, build.max_lora_rank, roles, source, name=str(i)) for i, p in enumerate(lora_dirs)]
    if not build.lora_target_modules:
        # the pool holds only the layers some adapter targets (what the reference's engine would be built with)
        used = set().union(*(a.roles for a in adapters))
        build.lora_target_modules = [_ROLE_TARGET[r] for r in ROLES if r in used]
    return adapters


def write_loras(out: Path, adapters: list[LoraAdapter], progress: Callable[[str], None] | None = None) -> None:
    """Every adapter in canonical form into out/lora/<task uid>/."""
    for i, adapter in enumerate(adapters):
        save(adapter, out / "lora" / str(i))
        if progress:
            progress(f"lora {i}: {adapter.source}, {len(adapter.modules)} modules, rank <= {adapter.max_rank}")


assert set(_ROLE_TARGET.values()) <= set(TARGET_MODULES)
