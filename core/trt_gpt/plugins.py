"""The plugin manager: registers the built-ins, loads entry points of group `trt_gpt`, collects registries.

Environment:
  TRT_GPT_PLUGINS            comma-separated allowlist of entry-point or distribution names to load
  TRT_GPT_DISABLE_AUTOLOAD=1 load no third-party entry points at all
  TRT_GPT_PLUGIN_MODULES     comma-separated modules to register as plugins without an installed
                             distribution (a source checkout on PYTHONPATH, e.g. on a machine without pip)
A third-party plugin that fails to import costs one warning line naming its distribution; the rest loads.
Third-party plugins are called before the built-ins (pluggy calls the last registered first), so a
plugin may replace a built-in variant, activation or source by registering the same name.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .env import env_setting, flag

GROUP = "trt_gpt"
BUILTIN = "builtins"


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)


@dataclass
class Registered:
    """One thing a plugin registered, with the plugin that did it."""
    item: Any
    plugin: str


class Plugins:
    """Owns the pluggy manager, the distribution of each plugin, and the cached registries."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.dists: dict[str, tuple[str | None, str | None]] = {}
        self.warnings: list[str] = []
        self._cache: dict[str, list[Registered]] = {}
        import trt_gpt_plugins

        self.pm.register(trt_gpt_plugins, name=BUILTIN)
        self.dists[BUILTIN] = ("trt-gpt", _version("trt-gpt"))
        self._load_entry_points()
        self._load_modules()
        self.pm.check_pending()

    def _load_entry_points(self) -> None:
        if env_setting("TRT_GPT_DISABLE_AUTOLOAD", flag, False):
            return
        allow = os.environ.get("TRT_GPT_PLUGINS")
        allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else None
            if allowed is not None and ep.name not in allowed and dist not in allowed:
                continue
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
                try:
                    self.pm.check_pending()  # a hookimpl matching no hookspec (a typo) is this plugin's fault
                except pluggy.PluginValidationError:
                    self.pm.unregister(plugin)
                    raise
            except Exception as e:  # a broken third-party plugin must not take the tool down
                msg = (f"warning: plugin '{ep.name}' from distribution '{dist or ep.value}' failed to load "
                       f"({type(e).__name__}: {e}); continuing without it")
                self.warnings.append(" ".join(msg.split()))
                print(self.warnings[-1], file=sys.stderr)
                continue
            self.dists[ep.name] = (dist, ep.dist.version if ep.dist else None)

    def _load_modules(self) -> None:
        for name in filter(None, (n.strip() for n in os.environ.get("TRT_GPT_PLUGIN_MODULES", "").split(","))):
            try:
                module = importlib.import_module(name)
            except Exception as e:
                self.warnings.append(f"warning: plugin module '{name}' failed to import ({type(e).__name__}: {e})")
                print(self.warnings[-1], file=sys.stderr)
                continue
            if not self.pm.is_registered(module):
                self.pm.register(module, name=name)
                self.dists[name] = (None, None)

    def collect(self, hook_name: str) -> list[Registered]:
        """Everything registered through `hook_name`, in call order (third-party first), cached."""
        if hook_name not in self._cache:
            out: list[Registered] = []
            for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
                def register(*args: Any, _plugin: str = impl.plugin_name) -> None:
                    out.append(Registered(args[0] if len(args) == 1 else args, _plugin))
                impl.function(register)
            self._cache[hook_name] = out
        return self._cache[hook_name]

    def infos(self) -> list[PluginInfo]:
        out = []
        for name, plugin in self.pm.list_name_plugin():
            dist, version = self.dists.get(name, (None, None))
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            out.append(PluginInfo(name, dist, version, hooks))
        return out


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded on first use."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
    return _plugins


def reset_plugins() -> None:
    """Forget loaded plugins so the next use reloads them (tests change the environment)."""
    global _plugins
    _plugins = None


def named_registry(hook_name: str) -> dict[str, Any]:
    """For hooks registering `(name, thing)` pairs: name -> thing; the first registration of a name wins."""
    out: dict[str, Any] = {}
    for reg in get_plugins().collect(hook_name):
        name, thing = reg.item
        out.setdefault(name, thing)
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
