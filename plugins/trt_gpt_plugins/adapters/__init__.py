"""Built-in adapter formats (registered through `register_adapters`): HF PEFT and NeMo LoRA; .npy, HF PEFT and
NeMo prompt-tuning tables."""
