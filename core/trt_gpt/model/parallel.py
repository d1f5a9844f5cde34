"""The tensor-parallel group seen by the model: collectives that are no-ops when tp_size is 1."""
from __future__ import annotations

import torch


class TPGroup:
    """Collectives over the ranks of one pipeline stage; `trt_gpt.distributed` provides the real one."""
    size = 1
    rank = 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return x
