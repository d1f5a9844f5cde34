"""A third-party variant, as a plugin author would write one: the "dummy-gpt" checkpoint format.

Its checkpoints are GPT-2 models saved under other tensor names (`embed`, `blocks.{i}.attn.{q,k,v}`,
`blocks.{i}.ffn.{up,down}`, plain [out, in] linears) with `model_type: "dummy_gpt"`. Everything
model-specific is data: how to detect the format, a config translation and a weight map.
"""
from __future__ import annotations

from typing import Iterator

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.hookspecs import hookimpl
from trt_gpt.sources import SourceCheckpoint
from trt_gpt.variants import VariantSpec
from trt_gpt.weights import fuse_qkv, map_names


def detect(src: SourceCheckpoint) -> bool:
    return src.config.get("model_type") == "dummy_gpt"


def load_config(src: SourceCheckpoint) -> ModelConfig:
    c = src.config
    return ModelConfig(vocab_size=c["vocab"], hidden_size=c["width"], num_hidden_layers=c["depth"],
                       num_attention_heads=c["heads"], intermediate_size=c["ffn"], hidden_act="gelu_new",
                       max_position_embeddings=c["context"], tie_word_embeddings=True)


WEIGHT_MAP = [
    (r"embed\.weight", r"transformer.vocab_embedding.weight", None),
    (r"pos\.weight", r"transformer.position_embedding.weight", None),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"transformer.layers.\1.input_layernorm.\2", None),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"transformer.layers.\1.post_layernorm.\2", None),
    (r"blocks\.(\d+)\.attn\.out\.(weight|bias)", r"transformer.layers.\1.attention.dense.\2", None),
    (r"blocks\.(\d+)\.ffn\.up\.(weight|bias)", r"transformer.layers.\1.mlp.fc.\2", None),
    (r"blocks\.(\d+)\.ffn\.down\.(weight|bias)", r"transformer.layers.\1.mlp.proj.\2", None),
    (r"final_norm\.(weight|bias)", r"transformer.ln_f.\1", None),
]


def weights(src: SourceCheckpoint, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    names = src.names()
    for i in range(cfg.num_hidden_layers):
        for kind in ("weight", "bias"):
            q, k, v = (src.tensor(f"blocks.{i}.attn.{p}.{kind}") for p in "qkv")
            yield f"transformer.layers.{i}.attention.qkv.{kind}", fuse_qkv(q, k, v)
    rest = [n for n in names if ".attn." not in n or ".attn.out." in n]
    yield from map_names(((n, src.tensor(n)) for n in rest), WEIGHT_MAP)
    yield "lm_head.weight", src.tensor("embed.weight")


@hookimpl
def register_variants(register):
    register(VariantSpec(name="dummy-gpt", description="test-suite third-party variant (GPT-2 under other names)",
                         detect=detect, load_config=load_config, weights=weights, aliases=("dummy",),
                         features=("MHA", "learned positions"), hidden=True))   # a test fixture: kept out of
                                                                                  # `trt-gpt variants list`
