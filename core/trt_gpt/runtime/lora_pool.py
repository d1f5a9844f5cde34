"""Multi-LoRA at run time: a preallocated device slot pool attached to the model's linear layers, the
per-token slot column of each step, and the adapters' residency (which adapter sits in which slot).

Per decoder layer and target role the pool holds A [slots, R, in] and B [slots, out, R] (this rank's shard;
R is max_lora_rank rounded up to a power of two >= 16, smaller ranks zero-padded; the scale folded into B).
Every targeted `Linear` gets `layer.adapter`, which adds each token's delta with the gather-matmul kernel
(Triton on CUDA, the torch reference with the torch attention backend) reading the step's slot column (-1:
no adapter), or for the kernels the tokens grouped by slot. On the fused small-batch path
(model/fused_layers.py) a float layer adds the delta inside its decode GEMV instead (a row shrink, then the
GEMV's LoRA epilogue, reading the adapter's A, B and the per-token slot column); a weight-only or FP8 layer
calls the adapter beside its kernel. The pool tensors and the slot column never move, so decode CUDA
graphs captured once stay valid while adapters are loaded, swapped and removed: loading writes into a
slot, a step writes its tokens' slots.

Residency: a request holds its adapter's slot from `acquire` (when it joins) to `release` (when it finishes
or is cancelled). A missing adapter is loaded into a free slot or over the least recently used one no
request holds; when every slot is held the request waits (`LLM` keeps it back) until one is released.
Loading happens between steps on the step stream, so it never changes weights under a running step.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

import torch

from ..config import BuildConfig, ModelConfig
from ..errors import TrtGptError
from ..kernels.lora_ref import segments
from ..lora.canonical import ROLES, LoraAdapter, roles_for_targets, shard

DEFAULT_MAX_LORAS = 8


class _SlotAdapter:
    """`Linear.adapter` of one layer: y + B[slot] (A[slot] x) for each token, in place. `cols` are the step's
    fixed inputs the function reads: (slots,) for the torch reference, (perm, seg) for the Triton kernels.
    The fused small-batch path reads `a`, `b` and the per-token column `slots` itself (its row shrink and
    the GEMV's LoRA epilogue, `model.fused_layers`)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, cols: tuple[torch.Tensor, ...],
                 fn: Any):
        self.a, self.b, self.slots, self.cols, self.fn = a, b, slots, cols, fn

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fn(x, y, *self.cols, self.a, self.b)


def _layer_linears(layer: Any) -> dict[str, Any]:
    mlp = layer.mlp
    out = {"qkv": layer.attention.qkv, "dense": layer.attention.dense, "fc": mlp.fc, "proj": mlp.proj}
    if getattr(mlp, "gated", False):
        out["gate"] = mlp.gate
    return out


class LoraPool:
    """The device tensors: per (local layer, role) A and B stacks, and the step's per-token slot column."""

    def __init__(self, model: Any, build: BuildConfig, num_slots: int, max_tokens: int, device: torch.device,
                 dtype: torch.dtype):
        if num_slots < 1:
            raise TrtGptError(f"max_loras is {num_slots}, expected a positive integer")
        self.num_slots, self.max_rank, self.dtype = num_slots, build.max_lora_rank, dtype
        # the kernels' tensor-core dots want a power-of-two rank of at least 16: the pool pads to one
        self.pool_rank = max(16, 1 << (build.max_lora_rank - 1).bit_length())
        self.roles = roles_for_targets(build.lora_target_modules, "build_config.lora_target_modules")
        # the step's fixed inputs in one int32 buffer (one upload): per-token slots [max_tokens] (the torch
        # reference reads them), the tokens grouped by slot [max_tokens] and the groups' bounds [slots + 1]
        # (the Triton kernels read these)
        self._cols = torch.zeros(2 * max_tokens + num_slots + 1, dtype=torch.int32, device=device)
        self._cols[:max_tokens] = -1
        self.max_tokens = max_tokens
        self.token_slots = self._cols[:max_tokens]
        self.perm, self.seg = self._cols[max_tokens:2 * max_tokens], self._cols[2 * max_tokens:]
        self._none_rows = max_tokens            # leading rows of token_slots known to hold -1 (and no segments)
        self._ring = [torch.empty(self._cols.shape[0], dtype=torch.int32, pin_memory=True) for _ in range(4)] \
            if device.type == "cuda" else []
        self._events = [torch.cuda.Event() for _ in self._ring] if self._ring else None
        self._turn = 0
        self.triton = getattr(model.backend, "name", "") == "triton"   # CUDA, or the interpreter in CPU tests
        if self.triton:
            from ..kernels.triton_lora import lora_add as fn
            cols: tuple[torch.Tensor, ...] = (self.perm, self.seg)
        else:
            from ..kernels.lora_ref import lora_add_ref as fn
            cols = (self.token_slots,)
        self.tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        for li, layer in enumerate(model.transformer.layers):
            for role, lin in _layer_linears(layer).items():
                if role not in self.roles:
                    continue
                a = torch.zeros(num_slots, self.pool_rank, lin.in_features, dtype=dtype, device=device)
                b = torch.zeros(num_slots, lin.out_features, self.pool_rank, dtype=dtype, device=device)
                self.tensors[(li, role)] = (a, b)
                lin.adapter = _SlotAdapter(a, b, self.token_slots, cols, fn)

    def write(self, slot: int, weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put one adapter's sharded weights into `slot` (every other module of the slot zeroed)."""
        for key, (a, b) in self.tensors.items():
            a[slot].zero_()
            b[slot].zero_()
            if key in weights:
                wa, wb = weights[key]
                r = wa.shape[0]
                a[slot, :r].copy_(wa, non_blocking=True)
                b[slot, :, :r].copy_(wb, non_blocking=True)

    def stage(self, slots: list[int], rows: int) -> None:
        """The step's per-token slots (-1 after them up to `rows`, padded graph rows) and their grouping.
        Both forms are always staged: the module path's kernels read the grouping, the fused small-batch
        path (and the torch reference) the per-token column."""
        n = min(max(rows, len(slots)), self.max_tokens)
        if self._none_rows >= n and all(s < 0 for s in slots):
            return      # the buffer already says "no adapter" for every row this step can read
        perm, seg = segments(slots, self.num_slots)
        host = self._host_buffer()
        host[:n] = -1
        if slots:
            host[:len(slots)] = torch.tensor(slots, dtype=torch.int32)
        m = self.max_tokens
        if perm:
            host[m:m + len(perm)] = torch.tensor(perm, dtype=torch.int32)
        host[2 * m:] = torch.tensor(seg, dtype=torch.int32)
        pinned = host.is_pinned()
        self.token_slots[:n].copy_(host[:n], non_blocking=pinned)
        self._cols[m:m + len(perm)].copy_(host[m:m + len(perm)], non_blocking=pinned)
        self.seg.copy_(host[2 * m:], non_blocking=pinned)
        if self._events is not None:
            self._events[self._turn].record()
        self._none_rows = n if not perm else 0

    def _host_buffer(self) -> torch.Tensor:
        """A host buffer for the upload. On CUDA a ring of pinned ones, each reused only once its previous
        copy has finished (an event), so the copy does not wait for the device: overlapped decoding
        enqueues the next step while the current one runs."""
        if self._events is None:
            return torch.empty(self._cols.shape[0], dtype=torch.int32)
        self._turn = (self._turn + 1) % len(self._ring)
        self._events[self._turn].synchronize()
        return self._ring[self._turn]

class LoraManager:
    """Named adapters (host copies of this rank's shards) and their residency in the pool's slots."""

    def __init__(self, pool: LoraPool, cfg: ModelConfig, max_rows: int):
        self.pool, self.cfg, self.max_rows = pool, cfg, max_rows
        self.weights: dict[str, dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]] = {}
        self.resident: OrderedDict[str, int] = OrderedDict()   # name -> slot, least recently used first
        self.holders: dict[str, int] = {}                        # name -> requests holding it
        self.request_slot: dict[int, int] = {}                   # request id -> slot
        self._owner: dict[int, str | None] = {}                  # ranks > 0: slot -> adapter it holds
        self.request_name: dict[int, str] = {}

    @classmethod
    def create(cls, engine: Any, max_loras: int, max_tokens: int) -> "LoraManager":
        pool = LoraPool(engine.model, engine.build, max_loras, max_tokens, engine.device, engine.dtype)
        return cls(pool, engine.cfg, engine.build.max_batch_size)

    # ------------------------------------------------------------------ adapters
    def add(self, name: str, adapter: LoraAdapter) -> None:
        """Register (or replace, when no request holds it) a validated adapter under `name`."""
        if self.holders.get(name):
            raise TrtGptError(f"LoRA '{name}' is in use by {self.holders[name]} running request(s); it cannot be "
                              "replaced now")
        adapter.validate(self.cfg, self.pool.max_rank, self.pool.roles)
        self.weights[name] = {k: (a.pin_memory() if self.pool.token_slots.is_cuda else a,
                                  b.pin_memory() if self.pool.token_slots.is_cuda else b)
                              for k, (a, b) in shard(adapter, self.cfg, self.cfg.mapping, self.pool.dtype).items()}
        slot = self.resident.pop(name, None)
        if slot is not None:
            self.pool.write(slot, {})   # stale copy out: reloaded on next use

    def remove(self, name: str) -> None:
        if name not in self.weights:
            raise TrtGptError(f"LoRA '{name}' is not loaded (loaded: {', '.join(self.weights) or 'none'})")
        if self.holders.get(name):
            raise TrtGptError(f"LoRA '{name}' is in use by {self.holders[name]} running request(s); remove it when "
                              "they finish")
        del self.weights[name]
        slot = self.resident.pop(name, None)
        if slot is not None:
            self.pool.write(slot, {})

    def check(self, name: str) -> None:
        if name not in self.weights:
            raise TrtGptError(f"unknown LoRA '{name}' (loaded: {', '.join(self.weights) or 'none'})")

    # ------------------------------------------------------------------ residency
    def acquire(self, request_id: int, name: str | None) -> bool:
        """Give the request its adapter's slot (loading it if needed); False when every slot is held."""
        if name is None:
            self.request_slot[request_id] = -1
            return True
        self.check(name)
        slot = self.resident.get(name)
        if slot is None:
            slot = self._free_slot()
            if slot is None:
                return False
            self.pool.write(slot, self.weights[name])
            self.resident[name] = slot
        self.resident.move_to_end(name)
        self.holders[name] = self.holders.get(name, 0) + 1
        self.request_slot[request_id], self.request_name[request_id] = slot, name
        return True

    def _free_slot(self) -> int | None:
        used = set(self.resident.values())
        for s in range(self.pool.num_slots):
            if s not in used:
                return s
        for name, slot in self.resident.items():   # least recently used first
            if not self.holders.get(name):
                del self.resident[name]
                return slot
        return None

    def release(self, request_id: int) -> None:
        self.request_slot.pop(request_id, None)
        name = self.request_name.pop(request_id, None)
        if name is not None:
            self.holders[name] -= 1

    def stage(self, seqs: Iterable[tuple[Any, int]]) -> None:
        """The per-token slot column of a step: each sequence's slot repeated for its n tokens."""
        slots: list[int] = []
        for seq, n in seqs:
            slots.extend([self.request_slot.get(seq.request_id, -1)] * n)
        self.last_slots = slots
        self.pool.stage(slots, self.max_rows)

    # ------------------------------------------------------------------ other tensor-parallel ranks
    def wire(self) -> list[int]:
        """What the other ranks need to stage rank 0's last step: each slot's adapter (its task uid, -1 for
        none), the token count and the tokens' slots. Only adapters every rank loaded (the engine's own,
        named by their uids) can be resident on a multi-rank engine."""
        owners = [-1] * self.pool.num_slots
        for name, slot in self.resident.items():
            owners[slot] = int(name)
        slots = getattr(self, "last_slots", [])
        return owners + [len(slots)] + slots

    def apply_wire(self, data: list[int]) -> list[int]:
        """Make this rank's slots hold rank 0's adapters and stage its slots; returns the entries after ours."""
        s = self.pool.num_slots
        owners, n = data[:s], data[s]
        slots, rest = data[s + 1:s + 1 + n], data[s + 1 + n:]
        for slot, uid in enumerate(owners):
            name = None if uid < 0 else str(uid)
            if self._owner.get(slot) != name:
                self.pool.write(slot, self.weights[name] if name is not None else {})
                self._owner[slot] = name
        self.pool.stage(slots, self.max_rows)
        return rest


def lora_name(value: Any) -> str | None:
    """A request's adapter as given: a name, a task uid (int or digits; -1 = none) or None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TrtGptError(f"sampling: 'lora' is {value!r}, expected an adapter name or task uid")
    if isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit()):
        v = int(value)
        return None if v == -1 else str(v)
    return str(value)


__all__ = ["LoraPool", "LoraManager", "lora_name", "DEFAULT_MAX_LORAS", "ROLES"]


class LoraRequests(LoraManager):
    """The manager as the `LLM` uses it: requests waiting for a slot, engine-dir adapters at start, and
    adapters retired while requests still use them (dropped when the last one ends)."""

    def __init__(self, pool: LoraPool, cfg: ModelConfig, max_rows: int):
        super().__init__(pool, cfg, max_rows)
        self.waiting: list[Any] = []
        self.retiring: set[str] = set()

    def users(self, name: str) -> int:
        """Requests using the adapter: holding its slot, or waiting for one."""
        return self.holders.get(name, 0) + sum(lora_name(s.params.lora) == name for s in self.waiting)

    def add(self, name: str, adapter: LoraAdapter) -> None:
        if name in self.retiring:
            raise TrtGptError(f"LoRA '{name}' is being removed ({self.users(name)} request(s) still use it); "
                              "add it again when they finish")
        super().add(name, adapter)

    def remove(self, name: str, when_idle: bool = False) -> None:
        """Drop an adapter. One that requests use (a waiting request will need its weights too) is refused,
        or with `when_idle` retired: new requests cannot name it, and it goes when the last user ends."""
        if name not in self.weights or name in self.retiring:
            raise TrtGptError(f"LoRA '{name}' is not loaded (loaded: {', '.join(self.names()) or 'none'})")
        n = self.users(name)
        if n and not when_idle:
            raise TrtGptError(f"LoRA '{name}' is in use by {n} running request(s); remove it when they finish")
        if n:
            self.retiring.add(name)
        else:
            super().remove(name)

    def names(self) -> list[str]:
        """The adapters requests may name (not those being removed)."""
        return [n for n in self.weights if n not in self.retiring]

    @classmethod
    def for_engine(cls, engine: Any, max_loras: int | None, max_tokens: int) -> "LoraRequests | None":
        """The engine's LoRA runtime (None when it was built without LoRA), with the adapters built into its
        dir (lora/<uid>/) registered under their task uids."""
        from ..lora.canonical import load

        if not engine.build.max_lora_rank:
            if max_loras:
                raise TrtGptError(f"max_loras is {max_loras} but the engine was built without LoRA "
                                  "(--max_lora_rank / --lora_dir at build)")
            return None
        if engine.cfg.mapping.pp_size > 1:
            # a pipeline step runs in micro-batches, each of which would need its own slice of the columns
            raise TrtGptError(f"{engine.dir}: LoRA adapters on a pipeline-parallel engine (pp_size "
                              f"{engine.cfg.mapping.pp_size}) are not supported yet; use tensor parallelism")
        pool = LoraPool(engine.model, engine.build, max_loras or DEFAULT_MAX_LORAS, max_tokens, engine.device,
                        engine.dtype)
        self = cls(pool, engine.cfg, engine.build.max_batch_size)
        root = engine.dir / "lora"
        if root.is_dir():
            for d in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
                self.add(d.name, load(d))
        return self

    def admit(self, seq: Any) -> bool:
        """Give a new request its adapter's slot; False (and kept waiting) when every slot is held."""
        name = lora_name(seq.params.lora)
        if name is not None:
            if name in self.retiring:
                raise TrtGptError(f"unknown LoRA '{name}' (it is being removed; loaded: "
                                  f"{', '.join(self.names()) or 'none'})")
            self.check(name)
        if self.acquire(seq.request_id, name):
            return True
        self.waiting.append(seq)
        return False

    def ready(self) -> list[Any]:
        """Waiting requests that got a slot since (in arrival order; the rest keep waiting)."""
        out = []
        for seq in list(self.waiting):
            if self.acquire(seq.request_id, lora_name(seq.params.lora)):
                self.waiting.remove(seq)
                out.append(seq)
        return out

    def forget(self, seq: Any) -> None:
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.release(seq.request_id)
        name = lora_name(seq.params.lora)
        if name in self.retiring and not self.users(name):
            self.retiring.discard(name)
            super().remove(name)
