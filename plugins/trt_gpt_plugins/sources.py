"""Reader of HuggingFace model directories: config.json plus model.safetensors, a sharded
safetensors index, or pytorch_model.bin (loaded only with `torch.load(weights_only=True)`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from trt_gpt.checkpoint import tokenizer_files_in
from trt_gpt.config import read_json
from trt_gpt.errors import TrtGptError


class HFDirSource:
    """Lazy tensor access: safetensors files are opened per tensor, .bin files loaded once."""
    format = "hf"

    def __init__(self, path: Path, config: dict[str, Any], index: dict[str, Path]):
        self.path, self.config, self._index = path, config, index
        self._bin_cache: dict[Path, dict[str, torch.Tensor]] = {}

    def names(self) -> list[str]:
        return list(self._index)

    def tensor(self, name: str) -> torch.Tensor:
        f = self._index.get(name)
        if f is None:
            raise TrtGptError(f"{self.path}: tensor '{name}' missing from the checkpoint")
        if f.suffix == ".bin":
            return self._load_bin(f)[name]
        try:
            with safe_open(str(f), framework="pt") as h:
                return h.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise TrtGptError(f"{f}: unreadable or corrupt safetensors file ({e})") from None

    def _load_bin(self, f: Path) -> dict[str, torch.Tensor]:
        if f not in self._bin_cache:
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # pickle errors, truncation, disallowed globals
                raise TrtGptError(f"{f}: cannot load as a weights-only torch file ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
            if not isinstance(sd, dict):
                raise TrtGptError(f"{f}: expected a state dict")
            self._bin_cache[f] = sd
        return self._bin_cache[f]

    def tokenizer_files(self) -> list[Path]:
        return tokenizer_files_in(self.path)


def _safetensors_keys(f: Path) -> list[str]:
    try:
        with safe_open(str(f), framework="pt") as h:
            return list(h.keys())
    except (SafetensorError, OSError, RuntimeError) as e:
        raise TrtGptError(f"{f}: unreadable or corrupt safetensors file ({e})") from None


def open_hf_dir(path: Path) -> HFDirSource | None:
    if not path.is_dir() or not (path / "config.json").is_file():
        return None
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise TrtGptError(f"{path / 'config.json'}: expected a JSON object")
    index: dict[str, Path] = {}
    single = path / "model.safetensors"
    sharded = path / "model.safetensors.index.json"
    binary = path / "pytorch_model.bin"
    if single.is_file():
        index = {k: single for k in _safetensors_keys(single)}
    elif sharded.is_file():
        wm = read_json(sharded).get("weight_map")
        if not isinstance(wm, dict):
            raise TrtGptError(f"{sharded}: missing 'weight_map'")
        for f in sorted(set(wm.values())):
            fp = path / f
            if not fp.is_file() or fp.resolve().parent != path.resolve():
                raise TrtGptError(f"{sharded}: shard '{f}' not found in {path}")
            index.update({k: fp for k in _safetensors_keys(fp)})
        missing = set(wm) - set(index)
        if missing:
            raise TrtGptError(f"{sharded}: tensor '{sorted(missing)[0]}' listed but absent from its shard")
    elif binary.is_file():
        src = HFDirSource(path, config, {})
        src._index = {k: binary for k in src._load_bin(binary)}
        return src
    else:
        raise TrtGptError(f"{path}: no weights found (expected model.safetensors, model.safetensors.index.json "
                          "or pytorch_model.bin)")
    if not index:
        raise TrtGptError(f"{path}: the weights file holds no tensors")
    return HFDirSource(path, config, index)


__all__ = ["open_hf_dir", "HFDirSource"]
