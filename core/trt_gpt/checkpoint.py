"""Checkpoint and engine directories: config.json + rank{r}.safetensors (+ tokenizer files), written atomically.

Layout follows the published TensorRT-LLM checkpoint format. A checkpoint's config.json is the model
config itself; an engine's config.json holds `pretrained_config` and `build_config`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import BuildConfig, ModelConfig, read_json
from .errors import TrtGptError

FORMAT_VERSION = "0.1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "generation_config.json")

DTYPE_MAP = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPE_MAP[name]
    except KeyError:
        raise TrtGptError(f"dtype '{name}' not supported (expected one of {', '.join(DTYPE_MAP)})") from None


def rank_file(directory: Path, rank: int) -> Path:
    return Path(directory) / f"rank{rank}.safetensors"


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success it replaces `out`, on failure it vanishes."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise TrtGptError(f"{out}: output directory exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise TrtGptError(f"{out}: exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise TrtGptError(f"{out}: cannot create the output directory ({e.strerror or e})") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_rank(directory: Path, rank: int, tensors: dict[str, torch.Tensor]) -> None:
    seen: set[int] = set()
    flat = {}
    for k, v in tensors.items():
        v = v.contiguous()
        if v.data_ptr() in seen:  # tied tensors (lm_head = embedding) are stored twice, as the format wants
            v = v.clone()
        seen.add(v.data_ptr())
        flat[k] = v
    save_file(flat, str(rank_file(directory, rank)),
              metadata={"format": "pt", "trt_gpt": FORMAT_VERSION})


def load_rank(directory: str | Path, rank: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load one rank's tensors (memory-mapped on CPU, straight to the device otherwise)."""
    path = rank_file(Path(directory), rank)
    if not path.is_file():
        raise TrtGptError(f"{path}: missing rank file")
    try:
        out = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
        return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TrtGptError(f"{path}: unreadable or corrupt safetensors file ({e})") from None


def load_checkpoint_config(ckpt_dir: str | Path) -> ModelConfig:
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise TrtGptError(f"{d}: checkpoint directory not found")
    return ModelConfig.load(d / "config.json")


def load_engine_config(engine_dir: str | Path) -> tuple[ModelConfig, BuildConfig]:
    d = Path(engine_dir)
    if not d.is_dir():
        raise TrtGptError(f"{d}: engine directory not found")
    raw = read_json(d / "config.json")
    if not isinstance(raw, dict) or "pretrained_config" not in raw or "build_config" not in raw:
        raise TrtGptError(f"{d / 'config.json'}: not an engine config (expected 'pretrained_config' and "
                          "'build_config'; is this a checkpoint dir? run `trt-gpt build` first)")
    cfg = ModelConfig.from_dict(raw["pretrained_config"], str(d / "config.json"))
    return cfg, BuildConfig.from_dict(raw["build_config"])


def engine_uses_random_weights(engine_dir: str | Path) -> bool:
    """Engines built from a bare config (`build --model_config`) hold no weights: the runtime draws them."""
    return read_json(Path(engine_dir) / "config.json").get("weights") == "random"


def copy_tokenizer_files(files: list[Path], out: Path) -> None:
    for f in files:
        if f.is_file():
            shutil.copy2(f, out / f.name)


def tokenizer_files_in(directory: Path) -> list[Path]:
    return [directory / n for n in TOKENIZER_FILES if (directory / n).is_file()]
