"""HF PEFT adapter directories (LoRA, prompt tuning): adapter_config.json checked for its peft_type, and the
weights from adapter_model.safetensors or adapter_model.bin, the latter with torch.load(weights_only=True)
so a pickled object is refused rather than run. Every failure is one line naming the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trt_gpt.config import read_json
from trt_gpt.errors import TrtGptError

CONFIG_NAME = "adapter_config.json"


def read_peft_config(path: Path, peft_type: str, default: str | None = None,
                     why: str = "") -> tuple[Path, dict[str, Any]]:
    """(the config file, its fields) of the PEFT directory `path`, whose `peft_type` must be `peft_type`
    (`default` when the field is absent); `why` is added to the wrong-type error."""
    cfg_file = Path(path) / CONFIG_NAME
    pc = read_json(cfg_file)
    if not isinstance(pc, dict):
        raise TrtGptError(f"{cfg_file}: expected a JSON object")
    found = pc.get("peft_type", default)
    if str(found).upper() != peft_type:
        raise TrtGptError(f"{cfg_file}: field 'peft_type' is {found!r}, expected {peft_type!r}"
                          + (f" {why}" if why else ""))
    return cfg_file, pc


def read_peft_weights(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the file read, its tensors): adapter_model.safetensors, else adapter_model.bin, in the PEFT directory
    `path`."""
    path = Path(path)
    st, binf = path / "adapter_model.safetensors", path / "adapter_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return st, load_file(str(st))
        if binf.is_file():
            state = torch.load(str(binf), map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ValueError("not a dict of tensors")
            return binf, state
    except Exception as e:  # noqa: BLE001 - safetensors and unpickling raise many types; all mean "corrupt"
        f = st if st.is_file() else binf
        raise TrtGptError(f"{f}: not a readable adapter weights file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'corrupt'})") from None
    raise TrtGptError(f"{path}: no adapter_model.safetensors or adapter_model.bin")
