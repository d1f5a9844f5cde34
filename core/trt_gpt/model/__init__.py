"""The one GPT model that covers every variant, configured by ModelConfig."""
from .gpt import GPTForCausalLM, expected_tensors, random_weights

__all__ = ["GPTForCausalLM", "expected_tensors", "random_weights"]
