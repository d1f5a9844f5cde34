"""LoRA adapters as models of the OpenAI API: each adapter the engine holds is a model id of its own
(GET /v1/models lists it with "parent": the base model's id, as vLLM does), a request whose `model` names
it runs with it, and `POST /v1/load_lora_adapter` / `POST /v1/unload_lora_adapter` (vLLM's routes) change
the set while the server runs.

An adapter's model id is the name it has in the engine (`LLM.add_lora`): the `--lora_dir` directory's name
or the name given as `NAME=DIR`, and for adapters built into the engine dir (`build --lora_dir`) their task
uid ("0", "1", ...). Changes go through the engine loop's thread between steps (the `LLM` is not
thread-safe). Unloading an adapter that requests use takes its id off at once (new requests: 404) and lets
those requests finish with it; the engine drops its weights when the last one ends.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import TrtGptError
from .protocol import ApiError

NO_LORA = ("the engine was built without LoRA (build it with --max_lora_rank R, or --lora_dir, to serve "
           "adapters)")


def parse_lora_dirs(values: Sequence[str]) -> list[tuple[str, Path]]:
    """`--lora_dir` values -> (model id, path): `NAME=PATH` names the adapter, a bare PATH is named by its
    last component. Every path must exist and every name be distinct (checked before the engine loads)."""
    out: list[tuple[str, Path]] = []
    for v in values:
        name, sep, rest = v.partition("=")
        # a bare path may itself contain '=': only a NAME without a path separator before it names the adapter
        if sep and name and rest and os.sep not in name and not Path(v).exists():
            path = Path(rest)
        else:
            name, path = Path(v).name, Path(v)
        if not path.exists():
            raise TrtGptError(f"--lora_dir {v}: {path}: no such file or directory")
        if any(name == n for n, _ in out):
            raise TrtGptError(f"--lora_dir: two adapters are named {name!r} (name them with NAME=DIR)")
        out.append((name, path))
    return out


def engine_adapters(llm: Any) -> list[str]:
    """The adapters the engine holds at start (those built into its dir, named by their task uids)."""
    lora = getattr(llm, "lora", None)
    return lora.names() if lora is not None else []


def register_lora_dirs(llm: Any, dirs: Sequence[tuple[str, Path]], source: str | None, base: str) -> None:
    """Load the `--lora_dir` adapters into the engine before it serves (one-line errors naming the flag)."""
    if dirs and getattr(llm, "lora", None) is None:
        raise TrtGptError(f"--lora_dir: {NO_LORA}")
    taken = set(engine_adapters(llm))
    for name, path in dirs:
        if name == base:
            raise TrtGptError(f"--lora_dir: the adapter {path} is named {name!r}, the base model's id (name it "
                              "with NAME=DIR or change --served_model_name)")
        if name in taken:
            raise TrtGptError(f"--lora_dir: {name!r} is already an adapter of the engine (its task uid); name "
                              f"{path} with NAME=DIR")
        try:
            llm.add_lora(name, path, source)
        except TrtGptError as e:
            raise TrtGptError(f"--lora_dir {path}: {e}") from None


class LoadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1)


def add_adapter_routes(app: FastAPI, state: Any) -> None:
    """POST /v1/load_lora_adapter and /v1/unload_lora_adapter over `state` (a ServeState)."""
    llm = state.engine.llm
    changing = asyncio.Lock()     # one load/unload at a time: two loads of one name must not both pass the check

    async def one_change(change: Any, body: Any) -> PlainTextResponse:
        if getattr(llm, "lora", None) is None:
            raise ApiError(400, NO_LORA, None)
        async with changing:
            return await change(body)

    @app.post("/v1/load_lora_adapter")
    async def load(body: LoadLoraRequest) -> PlainTextResponse:
        return await one_change(_load, body)

    async def _load(body: LoadLoraRequest) -> PlainTextResponse:
        name = body.lora_name
        if name == state.model_name:
            raise ApiError(400, f"lora_name {name!r} is the base model's id", "lora_name")
        if name in state.adapters:
            raise ApiError(400, f"the LoRA adapter {name!r} is already loaded (unload it first)", "lora_name")
        try:
            await state.engine.call(lambda: llm.add_lora(name, body.lora_path, state.lora_source))
        except TrtGptError as e:
            raise ApiError(400, str(e), "lora_path") from None
        state.adapters.append(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(body: UnloadLoraRequest) -> PlainTextResponse:
        return await one_change(_unload, body)

    async def _unload(body: UnloadLoraRequest) -> PlainTextResponse:
        name = body.lora_name
        if name not in state.adapters:
            raise ApiError(400, f"the LoRA adapter {name!r} is not loaded (loaded: "
                                f"{', '.join(state.adapters) or 'none'})", "lora_name")
        state.adapters.remove(name)        # new requests for it: 404 from here on
        try:
            # requests already using it finish with it; the engine drops it when the last one ends
            await state.engine.call(lambda: llm.remove_lora(name, when_idle=True))
        except TrtGptError as e:
            state.adapters.append(name)
            raise ApiError(400, str(e), "lora_name") from None
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
