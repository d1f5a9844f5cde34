"""Built-in adapter formats (registered through `register_adapters`): HF PEFT LoRA and NeMo LoRA."""
