"""Calibration: read text, cut it into token windows, run the float model on the module path and record
per-layer activation statistics that quantizers consume (AWQ's input scales, SmoothQuant's per-channel
input abs-max, KV-cache scales from the qkv output abs-max).

Every factory-made linear layer gets a forward hook recording, over all calibration tokens:
`in_absmax [in]` (max |x_j|), `in_absmean [in]` (mean |x_j|), `out_absmax [out]` (max |y_i|; for qkv
the K and V column blocks give KV-cache scales) and, when asked, a bounded sample of input rows `[n, in]`
(AWQ's search objective). Statistics are taken on the whole float model (tp 1, global layer indices);
`CalibStats.for_rank` cuts them to one tensor-parallel rank's layer.

Text: a `.txt` file (whole text), a `.jsonl` file (one object a line with a `text` or `article` field),
or, when none is given, a built-in sample shipped with the package (news articles; see data/README.md).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..config import ModelConfig
from ..errors import TrtGptError

DEFAULT_CALIB = "calib_default.jsonl"
SAMPLE_BYTES = 32 << 20   # per layer cap on sampled input rows (float32): a 7B model's 128 layers stay near 4 GiB
LAYER_PREFIX = "transformer.layers."


@dataclass
class LayerStats:
    """Activation statistics of one linear layer (float32, on CPU)."""
    in_absmax: torch.Tensor
    in_absmean: torch.Tensor
    out_absmax: torch.Tensor
    samples: torch.Tensor | None = None     # [n, in] input rows, or None when not collected
    tokens: int = 0


@dataclass
class CalibStats:
    """Statistics of every linear layer, by module name with global layer indices."""
    layers: dict[str, LayerStats] = field(default_factory=dict)
    tokens: int = 0
    windows: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"calibrated {len(self.layers)} layers on {self.tokens} tokens ({self.windows} windows) "
                f"in {self.seconds:.1f}s")

    def for_rank(self, name: str, parallel: str, cfg: ModelConfig) -> LayerStats:
        """The statistics of module `name` (layer index local to `cfg`'s pipeline stage) as its tensor-parallel
        rank sees them: a row-parallel layer's input statistics cut to its input slice. Output statistics
        stay global (column-parallel slicing is role-specific: qkv's heads)."""
        gname = global_name(name, cfg)
        if gname not in self.layers:
            raise TrtGptError(f"calibration statistics have no entry for '{gname}' (calibrated on another model?)")
        st = self.layers[gname]
        tp, r = cfg.mapping.tp_size, cfg.mapping.tp_rank
        if parallel != "row" or tp == 1:
            return st

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if t.shape[-1] % tp:
                raise TrtGptError(f"{gname}: input dimension {t.shape[-1]} not divisible by tp_size {tp}")
            return t.chunk(tp, dim=-1)[r].contiguous()
        return dataclasses.replace(st, in_absmax=cut(st.in_absmax), in_absmean=cut(st.in_absmean),
                                   samples=cut(st.samples))


def global_name(name: str, cfg: ModelConfig) -> str:
    """A module name with its stage-local layer index made global."""
    if not name.startswith(LAYER_PREFIX):
        return name
    idx, rest = name[len(LAYER_PREFIX):].split(".", 1)
    start = cfg.mapping.layer_range(cfg.num_hidden_layers).start
    return f"{LAYER_PREFIX}{int(idx) + start}.{rest}"


# ------------------------------------------------------------------ text
def read_calib_texts(path: str | Path | None) -> list[str]:
    """The texts of a .txt or .jsonl calibration file, or the built-in sample when `path` is None."""
    if path is None:
        data = resources.files("trt_gpt.quant").joinpath("data", DEFAULT_CALIB).read_text(encoding="utf-8")
        return _jsonl_texts(data, f"<built-in {DEFAULT_CALIB}>")
    p = Path(path)
    if not p.is_file():
        raise TrtGptError(f"{p}: calibration dataset not found")
    data = p.read_text(encoding="utf-8", errors="replace")
    texts = _jsonl_texts(data, str(p)) if p.suffix == ".jsonl" else [data]
    if not any(t.strip() for t in texts):
        raise TrtGptError(f"{p}: calibration dataset is empty")
    return texts


def _jsonl_texts(data: str, where: str) -> list[str]:
    out = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrtGptError(f"{where}:{n}: not valid JSON ({e.msg})") from None
        text = rec.get("text", rec.get("article")) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            raise TrtGptError(f"{where}:{n}: expected an object with a string 'text' or 'article' field")
        out.append(text)
    return out


def token_windows(texts: Sequence[str], encode: Callable[[str], list[int]], window: int, count: int,
                  where: str = "calibration dataset") -> list[list[int]]:
    """Up to `count` consecutive windows of `window` tokens from the texts joined by blank lines."""
    ids = encode("\n\n".join(t for t in texts if t.strip()))
    n = min(count, len(ids) // window)
    if n < 1:
        raise TrtGptError(f"{where}: {len(ids)} tokens, shorter than one calibration window of {window} tokens "
                          "(give more text or a smaller --calib_max_seq_length)")
    return [ids[i * window:(i + 1) * window] for i in range(n)]


# ------------------------------------------------------------------ statistics
class _Recorder:
    """Forward hook of one linear layer: running abs-max / abs-sum of inputs, abs-max of outputs, sampled rows."""

    def __init__(self, limit: int, gen: torch.Generator):
        self.limit, self.gen = limit, gen
        self.quota = 0          # rows to sample from the next call (set per batch of windows)
        self.absmax = self.abssum = self.out_absmax = None
        self.tokens = 0
        self.samples: list[torch.Tensor] = []

    def __call__(self, module, inputs, output) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float().cpu()
        y = output.detach().reshape(-1, output.shape[-1]).float().cpu()
        ax = x.abs()
        amax, asum, omax = ax.amax(0), ax.sum(0, dtype=torch.float64), y.abs().amax(0)
        if self.absmax is None:
            self.absmax, self.abssum, self.out_absmax = amax, asum, omax
        else:
            self.absmax = torch.maximum(self.absmax, amax)
            self.abssum += asum
            self.out_absmax = torch.maximum(self.out_absmax, omax)
        self.tokens += x.shape[0]
        if self.quota:
            rows = torch.randperm(x.shape[0], generator=self.gen)[:self.quota]
            self.samples.append(x[rows.sort().values])

    def stats(self) -> LayerStats:
        samples = torch.cat(self.samples)[:self.limit] if self.samples else None
        return LayerStats(self.absmax, (self.abssum / max(self.tokens, 1)).float(), self.out_absmax, samples,
                          self.tokens)


@torch.inference_mode()
def collect_stats(model: torch.nn.Module, windows: Sequence[Sequence[int]], max_samples: int = 0,
                  batch_windows: int = 4, progress: Callable[[int, int], None] | None = None) -> CalibStats:
    """Run `model` (a float `GPTForCausalLM`, tp 1 and pp 1, after `setup_runtime`) over the windows and record
    every linear layer's statistics; `max_samples` input rows per layer are kept (0: none; at most
    SAMPLE_BYTES of them a layer), drawn evenly from the windows."""
    from ..model.linear import linears
    from ..kernels.metadata import AttentionMetadata

    start = time.perf_counter()
    cfg = model.cfg
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    recorders = {name: _Recorder(min(max_samples, SAMPLE_BYTES // (4 * m.in_features)), gen)
                 for name, m in linears(model) if not name.endswith("lm_head")}
    handles = [m.register_forward_hook(recorders[name]) for name, m in linears(model) if name in recorders]
    kvh, d = cfg.num_key_value_heads, cfg.head_size
    try:
        done = 0
        for b0 in range(0, len(windows), batch_windows):
            batch = windows[b0:b0 + batch_windows]
            n, length = len(batch), len(batch[0])
            for r in recorders.values():
                r.quota = math.ceil(r.limit / len(windows)) * n
            meta = AttentionMetadata(
                cu_q_lens=torch.arange(0, (n + 1) * length, length, dtype=torch.int32, device=dev),
                context_lens=torch.full((n,), length, dtype=torch.int32, device=dev),
                block_tables=torch.arange(n, dtype=torch.int32, device=dev)[:, None],
                slot_mapping=torch.arange(n * length, dtype=torch.int64, device=dev),
                max_q_len=length, max_context_len=length, q_lens_host=[length] * n, context_lens_host=[length] * n)
            kv = [(torch.zeros(n, kvh, length, d, dtype=dtype, device=dev),
                   torch.zeros(n, kvh, length, d, dtype=dtype, device=dev)) for _ in model.transformer.layers]
            ids = torch.tensor([t for w in batch for t in w], dtype=torch.int64, device=dev)
            pos = torch.arange(length, device=dev).repeat(n)
            # only one logits row: the statistics are the linear layers', and a full [tokens, vocab] is large
            model(ids, pos, meta, kv, logits_rows=torch.zeros(1, dtype=torch.int64, device=dev))
            done += n
            if progress:
                progress(done, len(windows))
    finally:
        for h in handles:
            h.remove()
    layers = {name: r.stats() for name, r in recorders.items()}
    return CalibStats(layers, sum(len(w) for w in windows), len(windows), time.perf_counter() - start)


def float_model(model_dir: str | Path, variant: str | None = None, device: str | torch.device = "cpu",
                max_positions: int = 2048) -> torch.nn.Module:
    """The checkpoint's float32 model (tp 1, pp 1, no quantization) on `device`, ready for `collect_stats`."""
    from ..mapping import Mapping
    from ..model import GPTForCausalLM
    from ..sources import open_source
    from ..variants import resolve_variant
    from ..weights import rank_tensors

    src = open_source(model_dir)
    spec = resolve_variant(src, variant)
    cfg = spec.load_config(src)
    cfg.dtype, cfg.mapping = "float32", Mapping()
    state = dict(rank_tensors(spec.weights(src, cfg), cfg, cfg.mapping, torch.float32))
    with torch.device("meta"):
        model = GPTForCausalLM(cfg)
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True, assign=True)
    model.eval()
    model.setup_runtime(torch.device(device), max_positions)
    return model


def calibrate(model_dir: str | Path, calib_dataset: str | Path | None = None, calib_size: int = 64,
              max_seq_length: int = 512, max_samples: int = 0, variant: str | None = None,
              device: str | torch.device = "cpu", tokenizer_dir: str | Path | None = None,
              progress: Callable[[int, int], None] | None = None) -> CalibStats:
    """Statistics of a checkpoint's float model on calibration text: `calib_size` windows of
    `max_seq_length` tokens (capped at the model's positions)."""
    from ..runtime.tokenizer import load_tokenizer

    if calib_size < 1 or max_seq_length < 2:
        raise TrtGptError(f"calibration: --calib_size ({calib_size}) must be positive and --calib_max_seq_length "
                          f"({max_seq_length}) at least 2")
    texts = read_calib_texts(calib_dataset)
    model = float_model(model_dir, variant, device, max_seq_length)
    window = min(max_seq_length, model.cfg.max_position_embeddings)
    tok = load_tokenizer(tokenizer_dir or model_dir)
    windows = token_windows(texts, lambda s: tok.encode(s, add_special_tokens=False), window, calib_size,
                            str(calib_dataset or "built-in calibration sample"))
    return collect_stats(model, windows, max_samples, progress=progress)
