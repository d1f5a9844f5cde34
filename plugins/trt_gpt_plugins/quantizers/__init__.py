"""Built-in quantizer plugins (registered through `register_quantizers`)."""
from __future__ import annotations

from .fp8 import FP8Quantizer
from .kv_cache import KVCacheQuantizer
from .smoothquant import SmoothQuantQuantizer
from .weight_only import WeightOnlyQuantizer

QUANTIZERS = [WeightOnlyQuantizer(), SmoothQuantQuantizer(), FP8Quantizer(), KVCacheQuantizer()]

__all__ = ["QUANTIZERS", "FP8Quantizer", "KVCacheQuantizer", "SmoothQuantQuantizer", "WeightOnlyQuantizer"]
