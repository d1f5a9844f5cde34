"""The canonical LoRA adapter: per (global layer index, role) a pair A [r, in], B [out, r] and a scale, for
the whole (unsharded) model, so that y = x W^T + scale * (x A^T) B^T.

Loaders of every format (PEFT, NeMo) produce this through `LoraBuilder`, which also places the pieces of
separately trained q/k/v projections into the fused qkv layer (A stacked, B block-placed into the q/k/v
row ranges). `shard` cuts it for one tensor-parallel rank the way the base weights are cut; `save` and
`load` are its form inside an engine dir (lora/<uid>/adapter.safetensors + the scales in its metadata).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import TrtGptError
from ..mapping import Mapping
from ..weights import shard_tensor

ROLES = ("qkv", "dense", "fc", "gate", "proj")
# the reference's --lora_target_modules names -> roles (mlp_h_to_4h is the activated branch, mlp_gate the
# gated one, as in its Llama mapping: gate_proj -> mlp_h_to_4h, up_proj -> mlp_gate)
TARGET_MODULES = {"attn_qkv": "qkv", "attn_q": "qkv", "attn_k": "qkv", "attn_v": "qkv", "attn_dense": "dense",
                  "mlp_h_to_4h": "fc", "mlp_gate": "gate", "mlp_4h_to_h": "proj"}
# the canonical weight names of each role (weights.SHARD_RULES cuts an adapter's matrices by them)
_WEIGHT = {"qkv": "attention.qkv", "dense": "attention.dense", "fc": "mlp.fc", "gate": "mlp.gate", "proj": "mlp.proj"}
COLUMN = ("qkv", "fc", "gate")


def roles_for_targets(targets: list[str] | None, where: str = "--lora_target_modules") -> tuple[str, ...]:
    """The roles named by reference target-module names (None: every role)."""
    if not targets:
        return ROLES
    bad = [t for t in targets if t not in TARGET_MODULES]
    if bad:
        raise TrtGptError(f"{where}: unknown target module '{bad[0]}' (expected some of "
                          f"{', '.join(TARGET_MODULES)})")
    return tuple(r for r in ROLES if r in {TARGET_MODULES[t] for t in targets})


def role_shape(cfg: ModelConfig, role: str) -> tuple[int, int]:
    """(in_features, out_features) of a role's full, unsharded linear layer."""
    d, h = cfg.head_size, cfg.hidden_size
    if role == "qkv":
        return h, (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d
    if role == "dense":
        return cfg.num_attention_heads * d, h
    if role in ("fc", "gate"):
        if role == "gate" and not cfg.is_gated:
            raise TrtGptError(f"the model has no gated MLP: LoRA target '{role}' does not exist in it")
        return h, cfg.intermediate_size
    if role == "proj":
        return cfg.intermediate_size, h
    raise TrtGptError(f"LoRA target role '{role}' is not one of {', '.join(ROLES)}")


def qkv_rows(cfg: ModelConfig, piece: str) -> range:
    """Rows of the fused qkv output a projection piece (q, k, v, kv or qkv) occupies."""
    q, kv = cfg.num_attention_heads * cfg.head_size, cfg.num_key_value_heads * cfg.head_size
    return {"q": range(0, q), "k": range(q, q + kv), "v": range(q + kv, q + 2 * kv), "kv": range(q, q + 2 * kv),
            "qkv": range(0, q + 2 * kv)}[piece]


@dataclass
class LoraModule:
    a: torch.Tensor     # [r, in]
    b: torch.Tensor     # [out, r]
    scale: float

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass
class LoraAdapter:
    """One adapter for the whole model; `modules[(layer, role)]`."""
    name: str
    modules: dict[tuple[int, str], LoraModule] = field(default_factory=dict)
    source: str = ""

    @property
    def max_rank(self) -> int:
        return max((m.rank for m in self.modules.values()), default=0)

    @property
    def roles(self) -> set[str]:
        return {role for _, role in self.modules}

    def validate(self, cfg: ModelConfig, max_rank: int, roles: tuple[str, ...] = ROLES) -> "LoraAdapter":
        """Shapes against the base model, ranks against the engine's limit, roles against its targets."""
        if not self.modules:
            raise TrtGptError(f"{self.source or self.name}: the adapter has no LoRA weights")
        for (layer, role), m in sorted(self.modules.items()):
            where = f"{self.source or self.name}: layer {layer} {role}"
            if not 0 <= layer < cfg.num_hidden_layers:
                raise TrtGptError(f"{where}: layer index out of the base model's {cfg.num_hidden_layers} layers "
                                  "(an adapter for another base model)")
            reason = _rescaled_input(cfg, layer, role)
            if reason:
                raise TrtGptError(f"{where}: {reason}, so a LoRA there would add the wrong delta; adapt only "
                                  "layers reading the model's own activations (SmoothQuant: attn_dense, "
                                  "mlp_4h_to_h) or use an FP8 / weight-only base")
            if role not in roles:
                raise TrtGptError(f"{where}: the engine was built without this LoRA target (its targets: "
                                  f"{', '.join(roles)}); rebuild with --lora_target_modules naming it")
            fan_in, fan_out = role_shape(cfg, role)
            if m.a.dim() != 2 or m.b.dim() != 2 or m.a.shape[0] != m.b.shape[1]:
                raise TrtGptError(f"{where}: lora_A {list(m.a.shape)} and lora_B {list(m.b.shape)} do not pair "
                                  "up as [r, in] and [out, r]")
            if (m.a.shape[1], m.b.shape[0]) != (fan_in, fan_out):
                raise TrtGptError(f"{where}: lora_A {list(m.a.shape)} / lora_B {list(m.b.shape)} do not fit the "
                                  f"base model's {fan_in} -> {fan_out} layer (an adapter for another base model)")
            if m.rank > max_rank:
                raise TrtGptError(f"{where}: rank {m.rank} exceeds max_lora_rank {max_rank} (rebuild with a larger "
                                  "--max_lora_rank)")
        return self


def _rescaled_input(cfg: ModelConfig, layer: int, role: str) -> str | None:
    """Why the base model's `role` layer of `layer` cannot take an adapter (its input is rescaled), or None."""
    from ..quant.registry import linear_method

    return getattr(linear_method(cfg, role, layer), "rescaled_input", None)


class LoraBuilder:
    """Collects (layer, role) pieces from a loader; pieces covering part of a layer's output rows (separate
    q/k/v projections of a fused qkv) become one module: A stacked, B block-placed, scales folded into B."""

    def __init__(self, name: str, cfg: ModelConfig, source: str = ""):
        self.name, self.cfg, self.source = name, cfg, source
        self._pieces: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]]] = {}

    def add(self, layer: int, role: str, a: torch.Tensor, b: torch.Tensor, scale: float,
            rows: torch.Tensor | None = None, what: str = "") -> None:
        """`rows[i]`: the layer's output row that B's row i feeds (None: all rows in order)."""
        if rows is not None and b.shape[0] != rows.numel():
            raise TrtGptError(f"{self.source}: {what or f'layer {layer} {role}'}: lora_B has {b.shape[0]} rows, "
                              f"the base model's projection has {rows.numel()} (an adapter for another base model)")
        self._pieces.setdefault((layer, role), []).append((a.float(), b.float(), float(scale), rows))

    def build(self) -> LoraAdapter:
        out = LoraAdapter(self.name, source=self.source)
        for key, pieces in self._pieces.items():
            if len(pieces) == 1 and pieces[0][3] is None:
                a, b, scale, _ = pieces[0]
                out.modules[key] = LoraModule(a, b, scale)
                continue
            _, fan_out = role_shape(self.cfg, key[1])
            a = torch.cat([p[0] for p in pieces], dim=0)
            b = torch.zeros(fan_out, a.shape[0])
            col = 0
            for pa, pb, scale, rows in pieces:
                r = pa.shape[0]
                idx = rows if rows is not None else torch.arange(fan_out)
                if int(idx.max()) >= fan_out:
                    raise TrtGptError(f"{self.source}: layer {key[0]} {key[1]}: piece rows exceed the layer's "
                                      f"{fan_out} outputs")
                b[idx, col:col + r] = pb * scale
                col += r
            out.modules[key] = LoraModule(a, b, 1.0)
        return out


def shard(adapter: LoraAdapter, cfg: ModelConfig, mapping: Mapping,
          dtype: torch.dtype) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (local layer, role) -> (A, B * scale) in `dtype`: a column-parallel layer keeps A whole and
    cuts B's rows like its weight's (qkv: this rank's q/k/v heads); a row-parallel one cuts A's input columns
    like its weight's and keeps B whole (the partial deltas add up in the layer's all-reduce)."""
    layers = mapping.layer_range(cfg.num_hidden_layers)
    out = {}
    for (layer, role), m in adapter.modules.items():
        if layer not in layers:
            continue
        name = f"transformer.layers.{layer}.{_WEIGHT[role]}.weight"
        a, b = m.a, m.b * m.scale
        if role in COLUMN:
            b = shard_tensor(name, b, cfg, mapping)
        else:
            a = shard_tensor(name, a, cfg, mapping)
        out[(layer - layers.start, role)] = (a.to(dtype).contiguous(), b.to(dtype).contiguous())
    return out


# ------------------------------------------------------------------ inside an engine dir
FILE = "adapter.safetensors"


def save(adapter: LoraAdapter, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors, scales = {}, {}
    for (layer, role), m in adapter.modules.items():
        # clones: modules may share a matrix (a NeMo GLU fc1 adapter's A serves fc and gate)
        tensors[f"layers.{layer}.{role}.lora_a"] = m.a.clone().contiguous()
        tensors[f"layers.{layer}.{role}.lora_b"] = m.b.clone().contiguous()
        scales[f"{layer}.{role}"] = m.scale
    meta = {"name": adapter.name, "source": adapter.source, "scales": json.dumps(scales)}
    save_file(tensors, str(directory / FILE), metadata=meta)


def load(directory: Path) -> LoraAdapter:
    """An adapter saved by `save` (an engine's lora/<uid>/)."""
    from safetensors import safe_open

    path = Path(directory) / FILE
    if not path.is_file():
        raise TrtGptError(f"{path}: file not found (not a converted LoRA adapter)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            scales = json.loads(meta.get("scales", "{}"))
            mods: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
            for k in f.keys():
                _, layer, role, ab = k.split(".")
                mods.setdefault((int(layer), role), {})[ab] = f.get_tensor(k)
    except (OSError, ValueError, json.JSONDecodeError, Exception) as e:  # safetensors raises its own error type
        raise TrtGptError(f"{path}: not a readable LoRA adapter file ({type(e).__name__}: {e})") from None
    out = LoraAdapter(meta.get("name", path.parent.name), source=str(path.parent))
    for (layer, role), t in mods.items():
        out.modules[(layer, role)] = LoraModule(t["lora_a"], t["lora_b"], float(scales.get(f"{layer}.{role}", 1.0)))
    return out
