"""The NeMo adapter-archive opener shared by the NeMo LoRA and prompt-table formats: recognises .nemo paths,
refuses archives saved in tensor/pipeline-parallel parts, archive members outside the archive and a missing
gpt-next package in one line naming the file, and closes the reader however the caller leaves."""
from __future__ import annotations

import io
import sys
import tarfile

import pytest
import torch
import yaml

from trt_gpt.errors import TrtGptError
from trt_gpt_plugins.adapters.nemo_archive import looks_like_nemo, open_adapter_archive


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _ckpt(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_looks_like_nemo(tmp_path):
    for name in ("a.nemo", "b.TAR", "c.tar.gz", "d.tgz"):
        (tmp_path / name).write_bytes(b"x")
        assert looks_like_nemo(tmp_path / name)
    (tmp_path / "e.npy").write_bytes(b"x")
    assert not looks_like_nemo(tmp_path / "e.npy")
    (tmp_path / "unpacked").mkdir()
    assert not looks_like_nemo(tmp_path / "unpacked")
    (tmp_path / "unpacked" / "model_config.yaml").write_text("a: 1\n")
    assert looks_like_nemo(tmp_path / "unpacked")


def test_opens_a_single_part_archive_and_closes_it(tmp_path):
    pytest.importorskip("trt_gpt_gpt_next")
    t = torch.arange(6.0).reshape(2, 3)
    path = _tar(tmp_path / "a.nemo", {"./model_config.yaml": yaml.safe_dump({"x": 1}).encode(),
                                      "./model_weights.ckpt": _ckpt({"w": t})})
    with open_adapter_archive(path, "prompt table") as src:
        assert src.config == {"x": 1} and src.names() == ["w"] and torch.equal(src.tensor("w"), t)
        box = src._box
    assert box.tar.closed
    with pytest.raises(ValueError):
        with open_adapter_archive(path, "prompt table") as src:
            box = src._box
            raise ValueError("caller failure")
    assert box.tar.closed


def test_refusals_are_one_line(tmp_path):
    pytest.importorskip("trt_gpt_gpt_next")
    cfg = yaml.safe_dump({"tensor_model_parallel_size": 2}).encode()
    split = _tar(tmp_path / "split.nemo", {"./model_config.yaml": cfg,
                                           "./mp_rank_00/model_weights.ckpt": _ckpt({"w": torch.zeros(2)}),
                                           "./mp_rank_01/model_weights.ckpt": _ckpt({"w": torch.zeros(2)})})
    escape = _tar(tmp_path / "escape.nemo", {"./model_config.yaml": cfg, "../evil": b"x"})
    (tmp_path / "notnemo.tar").write_bytes(b"not a tar")
    (tmp_path / "dir").mkdir()
    for path, kind, msg in ((split, "LoRA adapter", "the LoRA adapter is saved in 2x1 tensor/pipeline parallel parts"),
                            (escape, "prompt table", "points outside the archive"),
                            (tmp_path / "notnemo.tar", "prompt table", "not a .nemo archive or an unpacked"),
                            (tmp_path / "dir", "LoRA adapter", "not a .nemo archive or an unpacked")):
        with pytest.raises(TrtGptError, match=msg) as e:
            with open_adapter_archive(path, kind):
                pass
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_variant_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trt_gpt_gpt_next.nemo_source", None)   # import fails as if not installed
    with pytest.raises(TrtGptError, match="NeMo prompt tables need the gpt-next variant package") as e:
        with open_adapter_archive(tmp_path / "a.nemo", "prompt table"):
            pass
    assert "\n" not in str(e.value)
