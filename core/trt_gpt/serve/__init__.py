"""The OpenAI-compatible HTTP server of `trt-gpt serve` (needs the `[serve]` extra)."""
