"""Quantization: which plugin implements a checkpoint's `quantization` block (registry), and the shared pieces
quantizer plugins build on."""
