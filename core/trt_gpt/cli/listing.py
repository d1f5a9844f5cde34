"""`trt-gpt variants list` and `trt-gpt plugins list`."""
from __future__ import annotations

import dataclasses
import json

import typer
from rich.table import Table

from ..plugins import get_plugins
from ..variants import all_variants
from .common import out_console

variants_app = typer.Typer(help="Model variants provided by installed plugins.", no_args_is_help=True,
                           rich_markup_mode=None)
plugins_app = typer.Typer(help="Installed plugins.", no_args_is_help=True, rich_markup_mode=None)


@variants_app.command("list")
def variants_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
                  show_all: bool = typer.Option(False, "--all", help="Include hidden (test-only) variants.")) -> None:
    """List the variants, their features and the package providing each."""
    rows = [{"name": v.name, "aliases": list(v.aliases), "description": v.description,
             "source_formats": list(v.source_formats), "architectures": list(v.hf_architectures),
             "features": list(v.features), "package": v.distribution, "version": v.version, "hidden": v.hidden}
            for v in sorted(all_variants(), key=lambda v: v.name) if show_all or not v.hidden]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("variant", "aliases", "formats", "features", "package")
    for col in table.columns:
        col.overflow = "fold"   # narrow terminals wrap names instead of cutting them
    for r in rows:
        table.add_row(r["name"], ", ".join(r["aliases"]), ", ".join(r["source_formats"]), ", ".join(r["features"]),
                      f"{r['package']} {r['version'] or ''}".strip())
    out_console.print(table)


@plugins_app.command("list")
def plugins_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List loaded plugins: name, distribution, version, the hooks each implements, the quantization
    algorithms and the adapter formats it provides."""
    from ..quant.registry import registered_quantizers
    from ..support import registered_adapters

    infos = get_plugins().infos()
    algos: dict[str, list[str]] = {}
    for q, plugin in registered_quantizers():
        algos.setdefault(plugin, []).extend([*q.quant_algos, *(f"kv:{a}" for a in q.kv_cache_quant_algos)])
    adapters: dict[str, list[str]] = {}   # plugin -> "kind:format" of each adapter format it registers
    for item, plugin in registered_adapters():
        adapters.setdefault(plugin, []).append(f"{item.kind}:{item.name}")
    if as_json:
        print(json.dumps([{**dataclasses.asdict(i), "quantizers": algos.get(i.name, []),
                           "adapters": adapters.get(i.name, [])} for i in infos], indent=2))
        return
    table = Table("plugin", "distribution", "version", "hooks", "quantizers", "adapters")
    for i in infos:
        table.add_row(i.name, i.distribution or "", i.version or "", ", ".join(i.hooks),
                      ", ".join(algos.get(i.name, [])), ", ".join(adapters.get(i.name, [])))
    out_console.print(table)
