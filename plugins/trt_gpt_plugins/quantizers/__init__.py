"""Built-in quantizer plugins (registered through `register_quantizers`)."""
from __future__ import annotations

from .weight_only import WeightOnlyQuantizer

QUANTIZERS = [WeightOnlyQuantizer()]

__all__ = ["QUANTIZERS", "WeightOnlyQuantizer"]
