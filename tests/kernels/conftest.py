"""Kernel tests run the Triton kernels through Triton's CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before any `@triton.jit` function is defined (i.e. before the kernel modules
are imported), so it is set here, at collection time, ahead of the test modules.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
