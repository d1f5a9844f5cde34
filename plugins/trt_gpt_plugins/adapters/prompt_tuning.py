"""Prompt-tuning tables: `.npy` files ([tasks, virtual tokens, hidden] as the reference's
nemo_prompt_convert.py writes, or one task's [virtual tokens, hidden]), read with allow_pickle=False, and
HF PEFT prompt-tuning adapters (adapter_config.json with peft_type PROMPT_TUNING, `prompt_embeddings`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trt_gpt.config import read_json
from trt_gpt.errors import TrtGptError


def _tasks(t: torch.Tensor, where: str) -> list[torch.Tensor]:
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[1] < 1:
        raise TrtGptError(f"{where}: prompt table of shape {list(t.shape)}, expected [tasks, virtual tokens, hidden] "
                          "or [virtual tokens, hidden]")
    return [x.float().contiguous() for x in t.unbind(0)]


class NpyPromptTable:
    name = "npy"
    kind = "prompt_table"
    description = "prompt table .npy ([tasks, virtual tokens, hidden], nemo_prompt_convert.py's output)"

    @staticmethod
    def detect(path: Path) -> bool:
        return Path(path).is_file() and Path(path).suffix.lower() == ".npy"

    def load(self, path: Path) -> list[torch.Tensor]:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise TrtGptError(f"{path}: not a readable .npy array ({e})") from None
        if arr.dtype.kind != "f":
            raise TrtGptError(f"{path}: prompt table of dtype {arr.dtype}, expected floating point")
        return _tasks(torch.from_numpy(arr.astype(np.float32)), str(path))


class PeftPromptTable:
    name = "peft"
    kind = "prompt_table"
    description = "HF PEFT prompt-tuning adapter (adapter_config.json peft_type PROMPT_TUNING)"

    @staticmethod
    def detect(path: Path) -> bool:
        return Path(path).is_dir() and (Path(path) / "adapter_config.json").is_file()

    def load(self, path: Path) -> list[torch.Tensor]:
        cfg_file = Path(path) / "adapter_config.json"
        pc = read_json(cfg_file)
        kind = str(pc.get("peft_type", "")).upper() if isinstance(pc, dict) else ""
        if kind != "PROMPT_TUNING":
            raise TrtGptError(f"{cfg_file}: field 'peft_type' is {pc.get('peft_type') if isinstance(pc, dict) else None!r}"
                              ", expected 'PROMPT_TUNING' (P-tuning and prefix tuning are not prompt tables)")
        if pc.get("num_transformer_submodules", 1) != 1:
            raise TrtGptError(f"{cfg_file}: field 'num_transformer_submodules' is {pc['num_transformer_submodules']}, "
                              "expected 1 (a decoder-only model)")
        st = Path(path) / "adapter_model.safetensors"
        try:
            if st.is_file():
                from safetensors.torch import load_file

                state = load_file(str(st))
            else:
                state = torch.load(str(Path(path) / "adapter_model.bin"), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - every failure here means an unreadable file
            raise TrtGptError(f"{path}: not a readable adapter weights file ({type(e).__name__})") from None
        if not isinstance(state, dict) or "prompt_embeddings" not in state:
            raise TrtGptError(f"{path}: no 'prompt_embeddings' tensor in the adapter weights")
        t = state["prompt_embeddings"]
        n = pc.get("num_virtual_tokens")
        if n is not None and t.shape[0] != n:
            raise TrtGptError(f"{path}: prompt_embeddings has {t.shape[0]} rows, 'num_virtual_tokens' says {n}")
        return _tasks(t, str(path))
