"""Attention and GEMM kernels: a torch reference for each, Triton versions for the GPU.

`attention_ref` is the ground truth used on CPU and in tests; `select_attention_backend` picks the
fastest backend whose capability check passes for a device and dtype.
"""
