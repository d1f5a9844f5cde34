"""Mapping of ranks to tensor- and pipeline-parallel positions, and of layers to pipeline stages."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import TrtGptError

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass
class Mapping:
    """Where one rank sits: rank = pp_rank * tp_size + tp_rank (TensorRT-LLM's convention)."""
    world_size: int = 1
    tp_size: int = 1
    pp_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size == 1 and self.tp_size * self.pp_size > 1:
            self.world_size = self.tp_size * self.pp_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.tp_size

    @property
    def is_first_pp_rank(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_pp_rank(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def with_rank(self, rank: int) -> "Mapping":
        return Mapping(self.world_size, self.tp_size, self.pp_size, rank)

    def layer_range(self, num_layers: int) -> range:
        """The layers this rank's pipeline stage owns; earlier stages take the remainder."""
        base, rem = divmod(num_layers, self.pp_size)
        start = self.pp_rank * base + min(self.pp_rank, rem)
        return range(start, start + base + (1 if self.pp_rank < rem else 0))

    def validate(self, model: "ModelConfig", source: str = "mapping") -> None:
        if self.world_size != self.tp_size * self.pp_size:
            raise TrtGptError(f"{source}: mapping.world_size ({self.world_size}) != tp_size*pp_size "
                              f"({self.tp_size}*{self.pp_size})")
        if not 0 <= self.rank < self.world_size:
            raise TrtGptError(f"{source}: mapping.rank {self.rank} outside 0..{self.world_size - 1}")
        if model.num_attention_heads % self.tp_size:
            raise TrtGptError(f"{source}: tp_size {self.tp_size} does not divide num_attention_heads "
                              f"({model.num_attention_heads})")
        kv = model.num_key_value_heads
        if kv % self.tp_size and self.tp_size % kv:
            raise TrtGptError(f"{source}: tp_size {self.tp_size} and num_key_value_heads ({kv}) must divide one "
                              "another")
        if model.intermediate_size % self.tp_size:
            raise TrtGptError(f"{source}: tp_size {self.tp_size} does not divide intermediate_size "
                              f"({model.intermediate_size})")
        if self.pp_size > model.num_hidden_layers:
            raise TrtGptError(f"{source}: pp_size {self.pp_size} exceeds num_hidden_layers "
                              f"({model.num_hidden_layers})")
