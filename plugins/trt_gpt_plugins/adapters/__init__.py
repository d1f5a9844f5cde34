"""Built-in adapter formats (registered through `register_adapters`)."""
