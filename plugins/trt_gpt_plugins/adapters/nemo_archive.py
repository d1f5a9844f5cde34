"""NeMo adapter archives (LoRA adapters, prompt tables): recognising a `.nemo` path and opening it with the
gpt-next variant's `.nemo` reader, the one the model's checkpoint source uses, so adapters get the same tar
traversal guards and weights-only loading. Adapters must be saved as one model_weights.ckpt."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from trt_gpt.errors import TrtGptError

if TYPE_CHECKING:
    from trt_gpt_gpt_next.nemo_source import NemoSource

# the same endings the gpt-next reader accepts; kept here so detect() works without that package installed
NEMO_SUFFIXES = (".nemo", ".tar", ".tar.gz", ".tgz")


def looks_like_nemo(path: str | Path) -> bool:
    """A .nemo (tar) file by its name, or a directory holding an unpacked .nemo's model_config.yaml."""
    p = Path(path)
    return (p.is_file() and p.name.lower().endswith(NEMO_SUFFIXES)) or (p / "model_config.yaml").is_file()


@contextmanager
def open_adapter_archive(path: str | Path, kind: str) -> Iterator["NemoSource"]:
    """The reader of a single-part NeMo adapter archive, closed on leaving; `kind` ("LoRA adapter",
    "prompt table") names what is read in the one-line errors."""
    try:
        from trt_gpt_gpt_next.nemo_source import open_nemo
    except ImportError:
        raise TrtGptError(f"{path}: NeMo {kind}s need the gpt-next variant package (trt-gpt-gpt-next)") from None
    path = Path(path)
    src = open_nemo(path)
    if src is None:
        raise TrtGptError(f"{path}: not a .nemo archive or an unpacked .nemo directory")
    try:
        if src.tp_size > 1 or src.pp_size > 1:
            raise TrtGptError(f"{path}: the {kind} is saved in {src.tp_size}x{src.pp_size} tensor/pipeline "
                              "parallel parts; expected one model_weights.ckpt (merge it with NeMo first)")
        yield src
    finally:
        src.close()
