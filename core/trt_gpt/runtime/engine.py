"""Engine loading: config, model built on `meta`, weights assigned from the (mmap'd) rank file."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoint import engine_uses_random_weights, load_engine_config, load_rank, torch_dtype
from ..config import BuildConfig, ModelConfig
from ..errors import TrtGptError
from ..support import check_supported
from ..kernels.kv_cache_spec import EIGHT_BIT_DTYPES, KVCacheSpec, storage_dtype
from ..model import GPTForCausalLM, random_weights
from ..model.parallel import TPGroup


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrtGptError(f"--device {device}: CUDA is not available on this machine")
    return dev


class Engine:
    """A loaded engine for one rank: its config, build limits and model on a device."""

    def __init__(self, engine_dir: str | Path, device: str | torch.device | None = None, rank: int | None = None,
                 tp_group: TPGroup | None = None, context_fmha_fp32_acc: bool = True):
        self.dir = Path(engine_dir)
        cfg, build = load_engine_config(self.dir)
        if rank is None:
            rank, tp_group = _rank_from_launch(self.dir, cfg, tp_group)
        self.random_weights = engine_uses_random_weights(self.dir)
        self.build: BuildConfig = build
        self.device = pick_device(device)
        self.cfg: ModelConfig = cfg
        cfg.mapping = cfg.mapping.with_rank(rank)
        self.dtype = torch_dtype(cfg.dtype)
        check_supported(cfg, build, str(self.dir / "config.json"))
        with torch.device("meta"):
            model = GPTForCausalLM(cfg, tp_group)
        if self.random_weights:
            # benchmarking engines built from a bare config: weights are drawn on the device, never stored
            state = random_weights(cfg, self.device)
        else:
            state = load_rank(self.dir, rank, self.device)
        missing = set(model.state_dict()) - set(state)
        if missing:
            raise TrtGptError(f"{self.dir}/rank{rank}.safetensors: missing tensor '{sorted(missing)[0]}'")
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()
        # what the KV cache stores; an 8-bit cache is refused here, at load, by a backend that cannot read it
        self.kv_spec = kv_cache_spec(model, build.kv_cache_dtype, self.dtype)
        backend = self._backend(context_fmha_fp32_acc)
        self.kv_spec.require_backend(backend.name)
        model.setup_runtime(self.device, build.max_seq_len, backend)
        self.model = model

    def _backend(self, context_fp32_acc: bool):
        return engine_attention_backend(self.device, self.dtype, context_fp32_acc, self.build.context_fmha)

    @property
    def kv_dtype(self) -> torch.dtype:
        return self.kv_spec.dtype


def kv_cache_spec(model: GPTForCausalLM, kv_cache_dtype: str | None, model_dtype: torch.dtype) -> KVCacheSpec:
    """The KV cache of a loaded model: `build_config.kv_cache_dtype`, else the checkpoint's
    `kv_cache_quant_algo` (an 8-bit cache, with each layer's K and V scales), else the model's dtype."""
    algo = model.cfg.quantization.kv_cache_quant_algo
    name = kv_cache_dtype or (algo.lower() if algo else None)
    dtype = storage_dtype(name, model_dtype)
    if dtype not in EIGHT_BIT_DTYPES:
        return KVCacheSpec(dtype)
    attn = [layer.attention for layer in model.transformer.layers]
    if not attn or attn[0].kv_scales is None:
        raise TrtGptError(f"kv_cache_dtype {name}: the checkpoint has no KV-cache scales (quantize it with an "
                          "8-bit KV cache: convert --int8_kv_cache or quantize --kv_cache_dtype)")
    return KVCacheSpec(dtype, torch.cat([a.kv_scales[0] for a in attn]).float(),
                       torch.cat([a.kv_scales[1] for a in attn]).float())


def engine_attention_backend(device: torch.device, dtype: torch.dtype, context_fp32_acc: bool = True,
                             context_fmha: bool = True):
    """The attention an engine runs: the automatic choice (Triton on CUDA; TRT_GPT_ATTENTION_BACKEND=torch|triton
    overrides it), or the unfused torch reference for an engine built with `--context_fmha disable`."""
    from ..kernels.backends import ENV_VAR, get_attention_backend

    if not context_fmha:
        if os.environ.get(ENV_VAR, "").strip().lower() == "triton":
            raise TrtGptError(f"{ENV_VAR}=triton: this engine was built with --context_fmha disable (unfused "
                              "attention); rebuild it with --context_fmha enable to run the fused kernels")
        from ..kernels.backends import torch_backend

        return torch_backend()
    return get_attention_backend(device, dtype, context_fp32_acc)


def _rank_from_launch(engine_dir: Path, cfg: ModelConfig, tp_group: TPGroup | None) -> tuple[int, TPGroup | None]:
    """Rank and TP group when the caller named none: those of a multi-rank launch (`DistributedLLM`), else rank
    0 of a one-rank engine; loading one shard of a sharded engine alone would compute garbage."""
    from ..distributed import active_groups

    groups = active_groups()
    if groups is not None:
        return groups.mapping.rank, groups.tp
    if cfg.mapping.world_size > 1:
        raise TrtGptError(f"{engine_dir}: engine has {cfg.mapping.world_size} ranks (tp_size {cfg.mapping.tp_size}, "
                          f"pp_size {cfg.mapping.pp_size}); launch it with `mpirun -np {cfg.mapping.world_size}` "
                          "and DistributedLLM / `trt-gpt run`")
    return 0, tp_group
