"""Plugin discovery: entry points, allowlist, autoload switch, a broken third-party plugin, and the
dummy third-party variant package (tests/plugins/dummy_variant) end to end."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.plugins import get_plugins
from trt_gpt.variants import all_variants

needs_dummy = pytest.mark.skipif(importlib.util.find_spec("trt_gpt_dummy") is None,
                                 reason="pip install -e tests/plugins/dummy_variant")


def names() -> set[str]:
    return {v.name for v in all_variants()}


def test_builtins_always_load_and_hooks_are_validated(monkeypatch):
    monkeypatch.setenv("TRT_GPT_DISABLE_AUTOLOAD", "1")
    infos = {i.name: i for i in get_plugins().infos()}
    assert set(infos) == {"builtins"}
    assert infos["builtins"].distribution == "trt-gpt"
    assert "register_activations" in infos["builtins"].hooks
    assert names() == set()


def test_allowlist_selects_plugins(monkeypatch):
    monkeypatch.setenv("TRT_GPT_PLUGINS", "gpt2")
    assert names() == {"gpt2"}
    from trt_gpt.plugins import reset_plugins

    reset_plugins()
    monkeypatch.setenv("TRT_GPT_PLUGINS", "trt-gpt-gpt2")  # a distribution name works too
    assert "gpt2" in names()


@needs_dummy
def test_dummy_third_party_variant_is_discovered(monkeypatch):
    monkeypatch.setenv("TRT_GPT_PLUGINS", "gpt2,dummy")
    spec = {v.name: v for v in all_variants()}["dummy-gpt"]
    assert (spec.distribution, spec.version) == ("dummy-gpt-variant", "0.3.1")
    info = {i.name: i for i in get_plugins().infos()}["dummy"]
    assert info.hooks == ["register_variants"] and info.distribution == "dummy-gpt-variant"


def write_dummy_checkpoint(path, seed=0):
    """A GPT-2 saved under the dummy format's names; returns the HF model as the oracle."""
    from safetensors.torch import save_file
    import json

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64, initializer_range=0.2)
    hf = GPT2LMHeadModel(cfg).eval()
    sd = hf.state_dict()
    out = {"embed.weight": sd["transformer.wte.weight"], "pos.weight": sd["transformer.wpe.weight"],
           "final_norm.weight": sd["transformer.ln_f.weight"], "final_norm.bias": sd["transformer.ln_f.bias"]}
    for i in range(2):
        h = f"transformer.h.{i}."
        qkv_w, qkv_b = sd[h + "attn.c_attn.weight"].t(), sd[h + "attn.c_attn.bias"]
        for j, p in enumerate("qkv"):
            out[f"blocks.{i}.attn.{p}.weight"] = qkv_w[j * 32:(j + 1) * 32]
            out[f"blocks.{i}.attn.{p}.bias"] = qkv_b[j * 32:(j + 1) * 32]
        for ours, theirs in (("attn.out", "attn.c_proj"), ("ffn.up", "mlp.c_fc"), ("ffn.down", "mlp.c_proj")):
            out[f"blocks.{i}.{ours}.weight"] = sd[h + theirs + ".weight"].t()
            out[f"blocks.{i}.{ours}.bias"] = sd[h + theirs + ".bias"]
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[f"blocks.{i}.{ours}.weight"] = sd[h + theirs + ".weight"]
            out[f"blocks.{i}.{ours}.bias"] = sd[h + theirs + ".bias"]
    path.mkdir()
    save_file({k: v.contiguous() for k, v in out.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "dummy_gpt", "vocab": 97, "width": 32, "depth": 2,
                                                  "heads": 4, "ffn": 128, "context": 64}))
    return hf


@needs_dummy
def test_dummy_variant_converts_and_matches_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("TRT_GPT_PLUGINS", "gpt2,dummy")
    from trt_gpt.testing import assert_parity, engine_from_checkpoint, random_prompts

    hf = write_dummy_checkpoint(tmp_path / "dummy")
    engine = engine_from_checkpoint(tmp_path / "dummy", tmp_path / "w", max_input_len=32)  # auto-detected
    assert_parity(hf, engine, random_prompts(97, [3, 11]), n_greedy=8)


def fake_distribution(path, monkeypatch, name: str, entry_point: str) -> None:
    """An installed-looking distribution on sys.path with one `trt_gpt` entry point (no pip needed)."""
    dist = path / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[trt_gpt]\n{entry_point}\n")
    monkeypatch.syspath_prepend(str(path))


def test_broken_plugin_warns_once_and_the_rest_loads(tmp_path, monkeypatch, capsys):
    """A distribution whose entry point fails to import: one warning line naming it, other plugins load."""
    fake_distribution(tmp_path, monkeypatch, "broken-plugin", "broken = trt_gpt_no_such_module_xyz")
    monkeypatch.setenv("TRT_GPT_PLUGINS", "gpt2,broken")
    assert "gpt2" in names()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken-plugin" in err[0] and "broken" in err[0]
    assert get_plugins().warnings == err


def test_plugin_with_invalid_hook_is_rejected(tmp_path, monkeypatch, capsys):
    """A hookimpl that matches no hookspec is caught by check_pending() and reported as a load failure."""
    mod = tmp_path / "trt_gpt_typo_plugin.py"
    mod.write_text("from trt_gpt.hookspecs import hookimpl\n\n@hookimpl\ndef register_variantz(register):\n"
                   "    pass\n")
    fake_distribution(tmp_path, monkeypatch, "typo-plugin", "typo = trt_gpt_typo_plugin")
    monkeypatch.setenv("TRT_GPT_PLUGINS", "gpt2,typo")
    assert "gpt2" in names()
    err = capsys.readouterr().err
    assert "typo-plugin" in err and "register_variantz" in err
    sys.modules.pop("trt_gpt_typo_plugin", None)


def test_plugin_modules_from_source_tree(tmp_path, monkeypatch):
    """TRT_GPT_PLUGIN_MODULES registers modules with no installed distribution; a module already loaded
    through its entry point is not registered twice."""
    (tmp_path / "trt_gpt_src_only.py").write_text(
        "from trt_gpt.hookspecs import hookimpl\nimport torch\n\n@hookimpl\ndef register_activations(register):\n"
        "    register('src-only-act', torch.tanh)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRT_GPT_PLUGINS", "gpt2")
    monkeypatch.setenv("TRT_GPT_PLUGIN_MODULES", "trt_gpt_src_only, trt_gpt_gpt2")
    from trt_gpt.plugins import named_registry

    assert "src-only-act" in named_registry("register_activations")
    assert [v.name for v in all_variants()].count("gpt2") == 1
    sys.modules.pop("trt_gpt_src_only", None)
