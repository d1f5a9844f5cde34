"""The `trt-gpt` command line: one typer sub-app a file, assembled in main.py."""
