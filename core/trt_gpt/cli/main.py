"""Entry point of `trt-gpt`: assembles the sub-commands, accepts the reference's spellings, and turns
user errors into one line on stderr with a non-zero exit (never a traceback).

Every option is declared once, with the reference's underscore spelling; the parser folds dashes into
underscores (click's token normaliser), so `--model-dir` works too while help shows one spelling.
"""
from __future__ import annotations

import difflib
import os
import sys

import typer

from ..errors import TrtGptError
from .bench import bench_cmd
from .convert_build import build_cmd, config_cmd, convert_cmd
from .demo import demo_cmd
from .listing import plugins_app, variants_app
from .quantize import quantize_cmd
from .run import run_cmd
from .serve import serve_cmd
from .summarize import summarize_cmd

# Flags that take several values after one flag, as the reference's argparse nargs='+' does.
MULTI_VALUE_FLAGS = {"--input_text", "--stop_words", "--bad_words", "--num_prepend_vtokens"}
MULTI_VALUE_FLAGS |= {"--lora_dir", "--lora_target_modules", "--lora_task_uids"}   # LoRA (docs/lora.md)


def normalize_option(name: str) -> str:
    """The one spelling options are matched by: dashes inside a name (given without its leading `--`, as
    click's token normaliser receives it) become underscores."""
    return name.replace("-", "_")


CONTEXT = {"token_normalize_func": normalize_option, "max_content_width": 100, "help_option_names": ["--help", "-h"]}


def make_app() -> typer.Typer:
    # rich_markup_mode=None: click's plain help, which wraps at the terminal width and never cuts an option name
    app = typer.Typer(name="trt-gpt", help="GPT-family models from published checkpoints to fast inference.",
                      no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                      rich_markup_mode=None, context_settings=CONTEXT)
    app.add_typer(variants_app, name="variants")
    app.add_typer(plugins_app, name="plugins")
    app.command("convert")(convert_cmd)
    app.command("config")(config_cmd)
    app.command("build")(build_cmd)
    app.command("run")(run_cmd)
    app.command("summarize")(summarize_cmd)
    app.command("demo")(demo_cmd)
    app.command("bench")(bench_cmd)
    app.command("quantize")(quantize_cmd)
    app.command("serve")(serve_cmd)
    from ..plugins import get_plugins

    get_plugins().pm.hook.register_commands(app=app)
    return app


def expand_multi_value(argv: list[str]) -> list[str]:
    """`--input_text a b` -> `--input_text a --input_text b` (typer options take one value each)."""
    out: list[str] = []
    flag = None
    for arg in argv:
        if arg.startswith("--") and "--" + normalize_option(arg[2:]) in MULTI_VALUE_FLAGS:
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


def usage_error_line(e: Exception) -> str:
    """A click usage error as one line; an unknown option names the closest known one."""
    ctx = getattr(e, "ctx", None)
    cmd = f"trt-gpt {ctx.command_path.split(' ', 1)[1]}" if ctx is not None and " " in ctx.command_path else "trt-gpt"
    opt = getattr(e, "option_name", None)
    if type(e).__name__ == "NoSuchOption" and opt:
        known = [o for p in (ctx.command.get_params(ctx) if ctx else []) for o in (*p.opts, *p.secondary_opts)
                 if o.startswith("--")]
        close = difflib.get_close_matches("--" + normalize_option(opt.lstrip("-")), known, n=1, cutoff=0.0)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"{cmd}: no such option {opt}{hint} (see {cmd} --help)"
    msg = " ".join(e.format_message().split()) if hasattr(e, "format_message") else str(e)
    return f"{cmd}: {msg[:1].lower() + msg[1:]} (see {cmd} --help)"


def _is_usage_error(e: BaseException) -> bool:
    return any(c.__name__ == "UsageError" for c in type(e).__mro__)


def _follower_quiet() -> bool:
    """Under a multi-rank launch, before the ranks have met, every rank meets the same bad input: only
    rank 0 says so. Once they have met, a failing rank other than 0 reports through `distributed.abort`."""
    if not any(k in os.environ for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "RANK", "SLURM_STEP_ID")):
        return False
    from ..distributed import launch_rank

    try:
        return launch_rank() != 0
    except TrtGptError:
        return False


def _run(args: list[str]) -> int:
    try:
        command = typer.main.get_command(make_app())
        rc = command.main(args, prog_name="trt-gpt", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except SystemExit as e:  # follower ranks released by rank 0
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except TrtGptError as e:
        if not _follower_quiet():
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if type(e).__name__ == "NoArgsIsHelpError":   # bare `trt-gpt` or `trt-gpt variants`: the help
            print(e.ctx.get_help() if getattr(e, "ctx", None) else e)
            return 0
        if _is_usage_error(e):
            if not _follower_quiet():
                print(f"error: {usage_error_line(e)}", file=sys.stderr)
            return 2
        if type(e).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            return 1
        # a bug of ours: still one line, the traceback only on request
        if os.environ.get("TRT_GPT_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"internal error: {type(e).__name__}: {first} (set TRT_GPT_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


# variables every supported launcher (mpirun: MPICH/Open MPI/MVAPICH, srun's PMI, torchrun) sets in a rank
_LAUNCHER_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_STEP_ID", "WORLD_SIZE")


def _exit(code: int) -> None:
    """Exit; under a multi-rank launch, with every rank ending on rank 0's code (`distributed.exit_after_run`)."""
    dist_llm = sys.modules.get("trt_gpt.runtime.distributed_llm")
    if dist_llm is not None and code != 0:
        dist_llm.release_followers(code)
    dist_mod = sys.modules.get("trt_gpt.distributed")
    # the native-teardown-free exit is for processes a launcher started (a failing rank must leave MPI
    # unfinalized for mpirun to fail the job); a plain process, or `main()` called in-process by a test
    # or a script, exits normally
    launched = dist_mod is not None and (getattr(dist_mod, "_WORLD", None) is not None
                                         or any(v in os.environ for v in _LAUNCHER_VARS))
    if not launched:
        sys.exit(code)
    dist_mod.exit_after_run(code)


def main(argv: list[str] | None = None) -> None:
    _exit(_run(expand_multi_value(list(sys.argv[1:] if argv is None else argv))))


if __name__ == "__main__":
    main()
