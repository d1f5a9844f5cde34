"""Reusable pinned host buffers for a step's packed int32 inputs.

Allocating page-locked memory (`Tensor.pin_memory()`) for every step costs a driver call of the order of
0.1 ms, more than a small-batch decode step's whole host budget, so the executor packs each step into one
of two long-lived pinned buffers instead. A buffer is reused only after the upload that last read it has
finished (an event per buffer), so the host never overwrites bytes a pending non-blocking copy still reads.
On a CPU device the "upload" is the host tensor itself, so every step gets a fresh one.
"""
from __future__ import annotations

import numpy as np
import torch


class PinnedStaging:
    def __init__(self, device: torch.device):
        self.device = device
        self.pinned = device.type == "cuda"
        self._bufs: list[torch.Tensor | None] = [None, None]
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._i = 0

    def take(self, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """A host int32 tensor of `n` elements (contents undefined) and its numpy view."""
        if not self.pinned:
            t = torch.empty(n, dtype=torch.int32)
            return t, t.numpy()
        self._i ^= 1
        i = self._i
        if self._events[i] is not None:
            self._events[i].synchronize()
        buf = self._bufs[i]
        if buf is None or buf.numel() < n:
            grown = max(n, 2 * buf.numel() if buf is not None else 1 << 14)
            buf = self._bufs[i] = torch.empty(grown, dtype=torch.int32, pin_memory=True)
        t = buf[:n]
        return t, t.numpy()

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """Upload the tensor last returned by `take` (asynchronously on CUDA)."""
        if not self.pinned:
            return host
        d = host.to(self.device, non_blocking=True)
        ev = self._events[self._i] or torch.cuda.Event()
        ev.record()
        self._events[self._i] = ev
        return d

    def upload_into(self, host: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the tensor last returned by `take` into the device tensor `dst` (asynchronously on CUDA)."""
        dst.copy_(host, non_blocking=self.pinned)
        if self.pinned:
            ev = self._events[self._i] or torch.cuda.Event()
            ev.record()
            self._events[self._i] = ev
