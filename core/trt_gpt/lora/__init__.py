"""LoRA adapters in the engine's canonical form (per decoder layer and linear role), their TP sharding,
the mapping from a source model's module names to those roles, and their on-disk form in an engine dir."""
