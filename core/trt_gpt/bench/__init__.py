"""Benchmarking: synthetic workloads on an engine, the same workload on HF transformers, and reports."""
