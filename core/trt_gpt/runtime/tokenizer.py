"""Tokenizers for `run`: an HF tokenizer directory, or a sentencepiece model file (`--vocab_file`)."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import TrtGptError


class Tokenizer(Protocol):
    eos_token_id: int | None
    pad_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class HFTokenizer:
    def __init__(self, directory: Path):
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as e:  # transformers raises many types for a bad dir
            raise TrtGptError(f"{directory}: cannot load a tokenizer ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
        self.eos_token_id = self.tok.eos_token_id
        self.pad_token_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


class SentencePieceTokenizer:
    def __init__(self, model_file: Path, add_special_tokens: bool = True):
        try:
            import sentencepiece as spm
        except ImportError:
            raise TrtGptError("--vocab_file needs sentencepiece: pip install 'trt-gpt[sentencepiece]'") from None
        if not model_file.is_file():
            raise TrtGptError(f"{model_file}: vocab file not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except Exception as e:
            raise TrtGptError(f"{model_file}: not a sentencepiece model ({e})") from None
        self.eos_token_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.pad_token_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_token_id
        self.bos = self.sp.bos_id()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos] + ids) if add_special_tokens and self.bos >= 0 else ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if i != self.eos_token_id])


def load_tokenizer(tokenizer_dir: str | Path | None = None, vocab_file: str | Path | None = None) -> Tokenizer:
    if vocab_file is not None:
        return SentencePieceTokenizer(Path(vocab_file))
    if tokenizer_dir is None:
        raise TrtGptError("no tokenizer: pass --tokenizer_dir or --vocab_file")
    d = Path(tokenizer_dir)
    if not d.is_dir():
        raise TrtGptError(f"{d}: tokenizer directory not found")
    if not any((d / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        if (d / "tokenizer.model").is_file():
            return SentencePieceTokenizer(d / "tokenizer.model")
        raise TrtGptError(f"{d}: no tokenizer files (expected tokenizer.json, vocab.json+merges.txt or "
                          "tokenizer.model)")
    return HFTokenizer(d)
