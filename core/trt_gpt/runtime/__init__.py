"""The runtime: engine loading, paged KV cache, scheduler (in-flight batching), executor, sampler, LLM API."""
