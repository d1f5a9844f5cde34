"""Entry point of `trt-gpt`: assembles the sub-commands, accepts the reference's spellings, and turns
user errors into one line on stderr with a non-zero exit (never a traceback)."""
from __future__ import annotations

import os
import sys

import typer

from ..errors import TrtGptError
from .bench import bench_cmd
from .convert_build import build_cmd, config_cmd, convert_cmd
from .demo import demo_cmd
from .listing import plugins_app, variants_app
from .run import run_cmd
from .summarize import summarize_cmd

# Flags that take several values after one flag, as the reference's argparse nargs='+' does.
MULTI_VALUE_FLAGS = {"--input_text", "--input-text", "--stop_words", "--stop-words", "--bad_words", "--bad-words"}
MULTI_VALUE_FLAGS |= {"--lora_dir", "--lora-dir", "--lora_target_modules", "--lora-target-modules",
                      "--lora_task_uids", "--lora-task-uids",      # LoRA (docs/lora.md)
                      "--num_prepend_vtokens", "--num-prepend-vtokens"}   # prompt tuning (docs/lora.md)


def make_app() -> typer.Typer:
    app = typer.Typer(name="trt-gpt", help="GPT-family models from published checkpoints to fast inference.",
                      no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
    app.add_typer(variants_app, name="variants")
    app.add_typer(plugins_app, name="plugins")
    app.command("convert")(convert_cmd)
    app.command("config")(config_cmd)
    app.command("build")(build_cmd)
    app.command("run")(run_cmd)
    app.command("summarize")(summarize_cmd)
    app.command("demo")(demo_cmd)
    app.command("bench")(bench_cmd)
    from ..plugins import get_plugins

    get_plugins().pm.hook.register_commands(app=app)
    return app


def expand_multi_value(argv: list[str]) -> list[str]:
    """`--input_text a b` -> `--input_text a --input_text b` (typer options take one value each)."""
    out: list[str] = []
    flag = None
    for arg in argv:
        if arg in MULTI_VALUE_FLAGS:
            flag = arg
            continue
        if flag is not None:
            if arg.startswith("--"):
                flag = None
            else:
                out += [flag, arg]
                continue
        out.append(arg)
    return out


def _exit(code: int) -> None:
    """Exit; after a multi-rank run, without C++ static teardown (`distributed.exit_after_run`)."""
    dist_mod = sys.modules.get("trt_gpt.distributed")
    if dist_mod is None or getattr(dist_mod, "_WORLD", None) is None:
        sys.exit(code)
    dist_mod.exit_after_run(code)


def _run(args: list[str]) -> int:
    try:
        make_app()(args, prog_name="trt-gpt", standalone_mode=True)
        return 0
    except SystemExit as e:  # typer's normal ending, and follower ranks released by rank 0
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except TrtGptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: still one line, the traceback only on request
        if os.environ.get("TRT_GPT_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"internal error: {type(e).__name__}: {first} (set TRT_GPT_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> None:
    _exit(_run(expand_multi_value(list(sys.argv[1:] if argv is None else argv))))


if __name__ == "__main__":
    main()
