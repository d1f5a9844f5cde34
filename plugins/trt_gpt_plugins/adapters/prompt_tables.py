"""Prompt-tuning tables (adapter kind "prompt_table"): each format reads its files into one float32 tensor
[tasks, virtual_tokens, hidden]; the runtime (runtime/prompt_pool.py) checks it against the engine.

- `npy`: what the reference's nemo_prompt_convert.py writes, [tasks, virtual_tokens, hidden] or
  [virtual_tokens, hidden] (one task); read with `np.load(allow_pickle=False)`.
- `peft`: an HF PEFT prompt-tuning directory (adapter_config.json with peft_type PROMPT_TUNING,
  adapter_model.safetensors or .bin holding `prompt_embeddings` [virtual_tokens, hidden]); one task.
- `nemo`: a NeMo p-tuning / prompt-tuning `.nemo` archive, read by the gpt-next variant's `.nemo` reader
  (its traversal guards and weights-only loading): the PEFT-style `adapter_layer.ptuning_adapter.inference_table`
  (one task) or per-task `prompt_table.<task>.prompt_embeddings.weight` in `task_templates` order, shorter
  tasks padded with zero rows as the reference's converter does.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trt_gpt.errors import TrtGptError

from .nemo_archive import looks_like_nemo, open_adapter_archive
from .peft_dir import CONFIG_NAME, read_peft_config, read_peft_weights


def _as_tasks(t: torch.Tensor, where: str) -> torch.Tensor:
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or 0 in t.shape:
        raise TrtGptError(f"{where}: expected a table [tasks, virtual_tokens, hidden] or [virtual_tokens, hidden], "
                          f"got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TrtGptError(f"{where}: expected floating-point embeddings, got {t.dtype}")
    return t.float()


class NpyPromptTable:
    name = "npy"
    aliases = ("numpy",)
    kind = "prompt_table"
    description = "prompt-tuning table .npy [tasks, virtual_tokens, hidden] (the reference's nemo_prompt_convert.py)"

    @staticmethod
    def detect(path: Path) -> bool:
        return Path(path).is_file() and Path(path).suffix.lower() == ".npy"

    def load(self, path: str | Path, config: Any = None) -> torch.Tensor:
        try:
            arr = np.load(str(path), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - truncation, bad header, object arrays: all mean "not a table"
            raise TrtGptError(f"{path}: not a readable .npy array ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'corrupt'})") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise TrtGptError(f"{path}: expected a float16/float32 array, got {getattr(arr, 'dtype', type(arr))}")
        return _as_tasks(torch.from_numpy(np.ascontiguousarray(arr)), str(path))


class PeftPromptTable:
    name = "peft"
    aliases = ("hf",)
    kind = "prompt_table"
    description = "HF PEFT prompt-tuning directory (adapter_config.json peft_type PROMPT_TUNING + prompt_embeddings)"

    @staticmethod
    def detect(path: Path) -> bool:
        cfg = Path(path) / CONFIG_NAME
        if not cfg.is_file():
            return False
        try:
            return str(json.loads(cfg.read_text()).get("peft_type", "")).upper() in ("PROMPT_TUNING", "P_TUNING",
                                                                                   "PREFIX_TUNING")
        except (ValueError, AttributeError, OSError):
            return True   # a broken config of a PEFT dir: load() names the problem

    def load(self, path: str | Path, config: Any = None) -> torch.Tensor:
        path = Path(path)
        cfg_file, pc = read_peft_config(path, "PROMPT_TUNING", why="(p-tuning and prefix tuning change more "
                                        "than the input embeddings)")
        subs = pc.get("num_transformer_submodules") or 1
        if subs != 1:
            raise TrtGptError(f"{cfg_file}: field 'num_transformer_submodules' is {subs!r}, expected 1 (a decoder)")
        st, tensors = read_peft_weights(path)
        if "prompt_embeddings" not in tensors:
            raise TrtGptError(f"{st}: no 'prompt_embeddings' tensor (found {', '.join(sorted(tensors)) or 'none'})")
        t = tensors["prompt_embeddings"]
        n = pc.get("num_virtual_tokens")
        if t.dim() != 2 or (n is not None and t.shape[0] != n):
            raise TrtGptError(f"{st}: 'prompt_embeddings' has shape {tuple(t.shape)}, expected "
                              f"[num_virtual_tokens ({n}), hidden]")
        return _as_tasks(t, str(st))


_TASK_KEY = re.compile(r"(?:^|\.)prompt_table\.(.+)\.prompt_embeddings\.weight$")


class NemoPromptTable:
    name = "nemo"
    aliases = ()
    kind = "prompt_table"
    description = "NeMo p-tuning / prompt-tuning .nemo archive (ptuning_adapter inference table or per-task tables)"

    @staticmethod
    def detect(path: Path) -> bool:
        return looks_like_nemo(path)

    def load(self, path: str | Path, config: Any = None) -> torch.Tensor:
        path = Path(path)
        with open_adapter_archive(path, "prompt table") as src:
            names = src.names()
            inference = [n for n in names if "adapter_layer.ptuning_adapter" in n]
            if inference:
                return _as_tasks(src.tensor(inference[0]), f"{path}:{inference[0]}")
            by_task = {m.group(1): n for n in names if (m := _TASK_KEY.search(n))}
            order = [t.get("taskname") for t in src.config.get("task_templates") or [] if isinstance(t, dict)]
            tables = [src.tensor(by_task[t]).float() for t in order if t in by_task] or \
                [src.tensor(by_task[t]).float() for t in sorted(by_task)]
            if not tables:
                raise TrtGptError(f"{path}: no prompt table in the archive (expected tensors "
                                  "'...adapter_layer.ptuning_adapter.inference_table' or "
                                  "'prompt_table.<task>.prompt_embeddings.weight')")
            if any(t.dim() != 2 or t.shape[1] != tables[0].shape[1] for t in tables):
                raise TrtGptError(f"{path}: per-task tables must all be [virtual_tokens, hidden] of one hidden size, "
                                  f"got {[tuple(t.shape) for t in tables]}")
            rows = max(t.shape[0] for t in tables)
            out = torch.zeros(len(tables), rows, tables[0].shape[1])
            for i, t in enumerate(tables):
                out[i, :t.shape[0]] = t
            return _as_tasks(out, str(path))


FORMATS = (NpyPromptTable(), PeftPromptTable(), NemoPromptTable())
