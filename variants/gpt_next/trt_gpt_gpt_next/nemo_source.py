"""Reader of NeMo `.nemo` checkpoints (a tar or tar.gz archive, or the same tree unpacked into a directory).

Presents the whole, unsharded NeMo state dict under NeMo's own tensor names: training tensor-parallel shards
(`mp_rank_XX/`, `tp_rank_XX_pp_rank_YYY/`) are merged and pipeline stages renumbered to global layer indices.
Renaming to canonical names is the gpt-next variant's job.

Safety: members are validated before anything is read (no absolute paths, no `..`, no links or devices),
only the files needed are copied out, under names chosen here, into a private temp dir that is removed when
the reader is closed or garbage-collected; weights load with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import io
import posixpath
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from trt_gpt.errors import TrtGptError

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"
SUFFIXES = (".nemo", ".tar", ".tar.gz", ".tgz")
EXPECTED = (f"expected a .nemo archive (tar or tar.gz) holding {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(or mp_rank_XX/{WEIGHTS_NAME} per tensor-parallel rank)")
RANK_DIR_RE = re.compile(r"^(?:mp_rank_(\d+)|tp_rank_(\d+)_pp_rank_(\d+))$")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
LAYER_RE = re.compile(r"(\.layers\.)(\d+)(\.)")

# Megatron tensor-parallel splits by NeMo tensor name (legacy and Megatron-core spellings).
COLUMN_RE = re.compile(r"(query_key_value|linear_qkv|dense_h_to_4h|dense_h_to_4h_2|linear_fc1)\.(weight|bias)$"
                       r"|(word_embeddings|output_layer)\.weight$")
ROW_RE = re.compile(r"(self_attention\.dense|dense_4h_to_h|linear_proj|linear_fc2)\.weight$")
FC1_RE = re.compile(r"(dense_h_to_4h|linear_fc1)\.(weight|bias)$")
GLU_ACTIVATIONS = ("swiglu", "fast-swiglu", "geglu", "fast-geglu", "reglu", "fast-reglu")


def fc1_is_concatenated(config: dict[str, Any], names: list[str]) -> bool:
    """Whether the first MLP linear holds [activated; up] stacked on dim 0 (per TP rank).

    Megatron-core and NeMo's legacy `fast-*` activations do this; legacy non-fast GLUs keep the second
    half in a separate `dense_h_to_4h_2`.
    """
    return config.get("activation") in GLU_ACTIVATIONS and not any(".dense_h_to_4h_2." in n for n in names)


# ----------------------------------------------------------------------------------------------
# Containers: the archive's files by their path relative to the checkpoint root
# ----------------------------------------------------------------------------------------------

class _TarContainer:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:*")
            infos = self.tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise TrtGptError(f"{path}: not a readable tar archive ({e}); {EXPECTED}") from None
        self.files: dict[str, tarfile.TarInfo] = {}
        for info in infos:
            name = _safe_member_name(path, info.name)
            if info.issym() or info.islnk():
                raise TrtGptError(f"{path}: archive member '{info.name}' is a link; a .nemo archive must hold "
                                  "regular files only")
            if info.isfile():
                self.files[name] = info
            elif not info.isdir():
                raise TrtGptError(f"{path}: archive member '{info.name}' is not a regular file or directory")

    def copy_to(self, name: str, dest: Path) -> None:
        src = self.tar.extractfile(self.files[name])
        if src is None:
            raise TrtGptError(f"{self.path}: archive member '{name}' cannot be read")
        with src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 16 << 20)

    def local_file(self, name: str) -> Path | None:
        return None  # members must be copied out before torch can memory-map them

    def read_bytes(self, name: str) -> bytes:
        src = self.tar.extractfile(self.files[name])
        if src is None:
            raise TrtGptError(f"{self.path}: archive member '{name}' cannot be read")
        with src:
            return src.read()

    def close(self) -> None:
        self.tar.close()


class _DirContainer:
    """An unpacked .nemo; files are read in place (and must stay inside the directory)."""

    def __init__(self, path: Path):
        self.path = path
        root = path.resolve()
        self.files: dict[str, Path] = {}
        for f in sorted(path.rglob("*")):
            if f.is_file() and f.resolve().is_relative_to(root):
                self.files[f.relative_to(path).as_posix()] = f

    def copy_to(self, name: str, dest: Path) -> None:
        shutil.copyfile(self.files[name], dest)

    def local_file(self, name: str) -> Path | None:
        return self.files[name]

    def read_bytes(self, name: str) -> bytes:
        return self.files[name].read_bytes()

    def close(self) -> None:
        pass


def _safe_member_name(archive: Path, raw: str) -> str:
    norm = posixpath.normpath(raw.replace("\\", "/"))
    if raw.startswith("/") or norm == ".." or norm.startswith("../"):
        raise TrtGptError(f"{archive}: archive member '{raw}' points outside the archive; refusing to read it")
    return "" if norm == "." else norm


# ----------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------

class NemoSource:
    """A SourceCheckpoint over a .nemo: `config` is model_config.yaml, names are NeMo's (TP-merged)."""
    format = "nemo"

    def __init__(self, path: Path, container: _TarContainer | _DirContainer, root: str):
        self.path, self._box, self._root = path, container, root
        self.config = _load_yaml(path, container, self._member(CONFIG_NAME))
        self._ranks = _find_ranks(path, container, root)   # (tp, pp) -> member
        self._check_parallel_sizes()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._shards: dict[tuple[int, int], dict[str, torch.Tensor]] | None = None
        self._index: dict[str, tuple[int, str]] = {}        # global name -> (pp stage, stage-local name)
        self._fc1_concat = False

    # -------------------------------------------------------------- SourceCheckpoint
    def names(self) -> list[str]:
        self._load()
        return list(self._index)

    def tensor(self, name: str) -> torch.Tensor:
        self._load()
        if name not in self._index:
            raise TrtGptError(f"{self.path}: tensor '{name}' missing from the checkpoint")
        pp, local = self._index[name]
        parts = []
        for tp in range(self.tp_size):
            shard = self._shards[(tp, pp)]
            if local not in shard:
                raise TrtGptError(f"{self.path}: tensor '{local}' missing from tensor-parallel rank {tp} "
                                  f"(pipeline stage {pp})")
            parts.append(shard[local])
        return _merge_tp(name, parts, self._fc1_concat)

    def tokenizer_files(self) -> list[Path]:
        """The sentencepiece model named by `tokenizer.model` in the yaml, copied out as `tokenizer.model`."""
        tok = self.config.get("tokenizer")
        if not isinstance(tok, dict) or tok.get("library", "sentencepiece") != "sentencepiece":
            return []   # GPT-2 BPE / HF tokenizers: the user passes --tokenizer_dir
        model = tok.get("model")
        member = self._member(posixpath.basename(model.removeprefix("nemo:"))) if isinstance(model, str) else ""
        if member not in self._box.files:
            # the yaml may name a path from training time; NeMo archives it as <hash>_tokenizer.model
            found = [n for n in self._box.files
                     if n.endswith("tokenizer.model") and posixpath.dirname(n) == self._root]
            if len(found) != 1:
                return []   # none (or ambiguous) in the archive: the user passes --vocab_file
            member = found[0]
        dest = self._tmpdir() / "tokenizer.model"
        if not dest.exists():
            self._box.copy_to(member, dest)
        return [dest]

    # -------------------------------------------------------------- helpers
    @property
    def tp_size(self) -> int:
        return 1 + max(tp for tp, _ in self._ranks)

    @property
    def pp_size(self) -> int:
        return 1 + max(pp for _, pp in self._ranks)

    def close(self) -> None:
        self._shards = None
        self._box.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _member(self, rel: str) -> str:
        return posixpath.join(self._root, rel) if self._root else rel

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            # TemporaryDirectory removes itself when this reader is closed or garbage-collected
            self._tmp = tempfile.TemporaryDirectory(prefix="trt-gpt-nemo-")
        return Path(self._tmp.name)

    def _check_parallel_sizes(self) -> None:
        for key, found in (("tensor_model_parallel_size", self.tp_size), ("pipeline_model_parallel_size",
                                                                           self.pp_size)):
            said = self.config.get(key)
            if said is not None and said != found:
                raise TrtGptError(f"{self.path}: {CONFIG_NAME} field '{key}' is {said!r} but the archive holds "
                                  f"{found} such rank(s) of {WEIGHTS_NAME}")

    def _load(self) -> None:
        if self._shards is not None:
            return
        shards: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        for (tp, pp), member in sorted(self._ranks.items()):
            file = self._box.local_file(member)
            if file is None:
                file = self._tmpdir() / f"tp{tp}_pp{pp}.ckpt"
                self._box.copy_to(member, file)
            shards[(tp, pp)] = _load_state_dict(self.path, member, file)
        self._shards = shards
        self._fc1_concat = fc1_is_concatenated(self.config, list(shards[(0, 0)]))
        offset = 0
        for pp in range(self.pp_size):
            local_layers = set()
            for local in shards[(0, pp)]:
                m = LAYER_RE.search(local)
                if m:
                    local_layers.add(int(m.group(2)))
                    name = LAYER_RE.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + offset}{m.group(3)}", local, 1)
                else:
                    name = local   # embeddings / final norm / head: the first stage holding one wins
                self._index.setdefault(name, (pp, local))
            offset += len(local_layers)


def _merge_tp(name: str, parts: list[torch.Tensor], fc1_concat: bool) -> torch.Tensor:
    """Undo Megatron's tensor-parallel split of one tensor."""
    if len(parts) == 1:
        return parts[0]
    if fc1_concat and FC1_RE.search(name):
        # each rank holds [its slice of the activated half; its slice of the up half]
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    if COLUMN_RE.search(name):
        return torch.cat(parts, dim=0)
    if ROW_RE.search(name):
        return torch.cat(parts, dim=1)
    return parts[0]


def _load_state_dict(archive: Path, member: str, file: Path) -> dict[str, torch.Tensor]:
    where = f"{archive}:{member}"
    try:
        # older Transformer Engine versions pickle `_extra_state` as io.BytesIO: plain bytes, safe to allow
        with torch.serialization.safe_globals([io.BytesIO, bytes]):
            sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # pickle errors, truncation, disallowed globals
        text = ANSI_RE.sub("", str(e))
        if "Weights only load failed" in text:
            reason = "it holds Python objects other than tensors, which are refused for safety"
        else:
            reason = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
        raise TrtGptError(f"{where}: cannot load as a weights-only torch checkpoint ({reason})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]   # a Lightning checkpoint rather than a bare state dict
    if not isinstance(sd, dict):
        raise TrtGptError(f"{where}: expected a state dict of tensors")
    # TE's `_extra_state` entries (FP8 metadata) and other non-tensors carry no weights
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}


def _load_yaml(path: Path, box: _TarContainer | _DirContainer, member: str) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(box.read_bytes(member).decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise TrtGptError(f"{path}: {CONFIG_NAME} is not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(cfg, dict):
        raise TrtGptError(f"{path}: {CONFIG_NAME} must be a mapping of model settings")
    return _resolve_interpolations(cfg)


_REF_RE = re.compile(r"^\$\{(\.?)([\w.]+)\}$")


def _resolve_interpolations(cfg: dict[str, Any]) -> dict[str, Any]:
    """Resolve OmegaConf references such as `max_position_embeddings: ${.encoder_seq_length}`, which
    NeMo writes verbatim into model_config.yaml; unresolvable ones stay as they are."""
    def lookup(scope: dict, dotted: str) -> Any:
        cur: Any = scope
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise KeyError(dotted)
            cur = cur[part]
        return cur

    def walk(node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value)
            elif isinstance(value, str):
                m = _REF_RE.match(value)
                if m:
                    for scope in ((node, cfg) if m.group(1) else (cfg,)):
                        try:
                            node[key] = lookup(scope, m.group(2))
                            break
                        except KeyError:
                            continue

    for _ in range(4):  # references to references
        walk(cfg)
    return cfg


def _find_ranks(path: Path, box: _TarContainer | _DirContainer, root: str) -> dict[tuple[int, int], str]:
    ranks: dict[tuple[int, int], str] = {}
    prefix = f"{root}/" if root else ""
    for name in box.files:
        if not name.startswith(prefix):
            continue
        rel = name[len(prefix):]
        if rel == WEIGHTS_NAME:
            ranks[(0, 0)] = name
            continue
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == WEIGHTS_NAME:
            m = RANK_DIR_RE.match(parts[0])
            if m:
                tp = int(m.group(1) if m.group(1) is not None else m.group(2))
                ranks[(tp, int(m.group(3) or 0))] = name
    if not ranks:
        if any(n.startswith(f"{prefix}model_weights/") for n in box.files):
            raise TrtGptError(f"{path}: holds a distributed (torch_dist/zarr) checkpoint in model_weights/, which "
                              f"is not supported; {EXPECTED}")
        raise TrtGptError(f"{path}: no {WEIGHTS_NAME} found; {EXPECTED}")
    tps = 1 + max(tp for tp, _ in ranks)
    pps = 1 + max(pp for _, pp in ranks)
    for tp in range(tps):
        for pp in range(pps):
            if (tp, pp) not in ranks:
                raise TrtGptError(f"{path}: {WEIGHTS_NAME} of tensor-parallel rank {tp}, pipeline stage {pp} is "
                                  f"missing (the archive holds {tps}x{pps} ranks)")
    return ranks


def _open(path: Path, make: Callable[[Path], _TarContainer | _DirContainer], strict: bool) -> NemoSource | None:
    box = make(path)
    configs = sorted((n for n in box.files if posixpath.basename(n) == CONFIG_NAME), key=lambda n: n.count("/"))
    if not configs:
        box.close()
        if strict:
            raise TrtGptError(f"{path}: no {CONFIG_NAME} in the archive; {EXPECTED}")
        return None
    try:
        return NemoSource(path, box, posixpath.dirname(configs[0]))
    except BaseException:
        box.close()
        raise


def open_nemo(path: Path) -> NemoSource | None:
    """A reader for a .nemo file or an unpacked .nemo directory; None for anything else."""
    if path.is_dir():
        return _open(path, _DirContainer, strict=False) if (path / CONFIG_NAME).is_file() else None
    if not path.is_file() or not path.name.lower().endswith(SUFFIXES):
        return None
    if not tarfile.is_tarfile(path):
        if path.name.lower().endswith(".nemo"):
            raise TrtGptError(f"{path}: not a tar archive; {EXPECTED}")
        return None
    return _open(path, _TarContainer, strict=path.name.lower().endswith(".nemo"))


__all__ = ["NemoSource", "open_nemo", "fc1_is_concatenated"]
