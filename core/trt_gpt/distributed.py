"""Multi-rank launch: rank discovery (MPI, Slurm, torchrun variables), torch.distributed set-up (NCCL on GPU,
gloo on CPU), the tensor- and pipeline-parallel groups of an engine's Mapping, and ending every rank with a
one-line error on a fault (process-group timeouts, a step watchdog, MPI Abort) instead of hanging.

Timeouts (seconds, environment): TRT_GPT_DIST_TIMEOUT (default 30) bounds every collective and point-to-point
transfer of a step, and the watchdog ends a step that is still running 10 s after it; TRT_GPT_DIST_IDLE_TIMEOUT
(default one week) bounds how long ranks > 0 wait for rank 0's next step, since rank 0 may idle between
requests. A rank that dies is noticed at once on gloo (its sockets close) and within the timeout on NCCL.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, NoReturn

import torch
import torch.distributed as dist

from .env import env_setting, positive_float
from .errors import TrtGptError
from .mapping import Mapping
from .model.parallel import TPGroup

TIMEOUT_ENV = "TRT_GPT_DIST_TIMEOUT"
IDLE_TIMEOUT_ENV = "TRT_GPT_DIST_IDLE_TIMEOUT"
WATCHDOG_GRACE_S = 10.0
# variables by which a launcher tells a process it is one rank of an MPI job
MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job, and which launcher said so."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launcher: str = "single"     # mpi | slurm | torchrun | single


def _env_int(*names: str) -> int | None:
    for n in names:
        v = os.environ.get(n, "").strip()
        if v:
            try:
                return int(v.split("(")[0].split(",")[0])   # SLURM_TASKS_PER_NODE looks like "2(x3),1"
            except ValueError:
                raise TrtGptError(f"environment variable {n}={v!r} is not an integer") from None
    return None


_MPI_STATE: dict[str, Any] = {}   # "finalizer": registered; "info": this rank's RankInfo (asked once)


def _mpi() -> Any | None:
    """mpi4py's MPI module when this process was started by an MPI launcher, else None."""
    if not any(n in os.environ for n in MPI_ENV):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    if "finalizer" not in _MPI_STATE:
        # Finalize while Python is still alive: mpi4py's own finalize runs at C-level exit, after torch's
        # static teardown has begun, and then aborts now and again ("terminate called without an active
        # exception"). Registered before the process groups are made, so it runs after they are destroyed.
        _MPI_STATE["finalizer"] = atexit.register(_finalize_mpi)
    return MPI


def _finalize_mpi() -> None:
    from mpi4py import MPI

    with contextlib.suppress(Exception):
        if MPI.Is_initialized() and not MPI.Is_finalized():
            MPI.Finalize()


def discover() -> RankInfo:
    """This process's rank from the launcher: torchrun, then MPI (mpi4py, else its variables), then srun."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:   # torchrun / torch.distributed.run
        size = _env_int("WORLD_SIZE")
        return RankInfo(_env_int("RANK"), size, _env_int("LOCAL_RANK") or 0,
                        _env_int("LOCAL_WORLD_SIZE") or size, "torchrun")
    MPI = _mpi()
    if MPI is not None:
        if "info" not in _MPI_STATE:   # Split_type is collective: ask once, whoever asks again later
            comm = MPI.COMM_WORLD
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)
            _MPI_STATE["info"] = RankInfo(comm.Get_rank(), comm.Get_size(), node.Get_rank(), node.Get_size(), "mpi")
            node.Free()
        return _MPI_STATE["info"]
    if any(n in os.environ for n in MPI_ENV):   # an MPI launcher but no mpi4py: its variables still say who we are
        size = _env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS",
                        "SLURM_NTASKS")
        rank = _env_int("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
        if size is not None and rank is not None:
            local = _env_int("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID") or 0
            lsize = _env_int("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_TASKS_PER_NODE") or size
            return RankInfo(rank, size, local, lsize, "mpi")
    # SLURM_STEP_ID is set inside `srun` only: a batch script alone is one process whatever --ntasks says
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:
        size = _env_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1
        return RankInfo(_env_int("SLURM_PROCID"), size, _env_int("SLURM_LOCALID") or 0,
                        _env_int("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE") or 1, "slurm")
    return RankInfo()


def launch_rank() -> int:
    """This process's rank from the launcher's environment alone (0 when run directly); asks no one."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _env_int("RANK") or 0
    return _env_int("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK") or (
        _env_int("SLURM_PROCID") or 0 if "SLURM_STEP_ID" in os.environ else 0)


def launch_world_size() -> int:
    """How many ranks the launcher started (1 when run directly)."""
    return discover().world_size


def timeout_s(env: str = TIMEOUT_ENV, default: float = 30.0) -> float:
    return env_setting(env, positive_float, default)


# ----------------------------------------------------------------------------------------------
# Ending every rank on a fault
# ----------------------------------------------------------------------------------------------

def abort(message: str, code: int = 1) -> NoReturn:
    """Print one line and end this process so that the others end too, never waiting on them.

    A plain exit is not enough under MPI: mpi4py's MPI_Finalize at exit waits for every rank, so a rank
    leaving on an error would hang the job. MPI Abort makes the launcher end all ranks; without MPI the
    others notice the closed sockets (gloo) or time out (NCCL).
    """
    info = _WORLD.info if _WORLD is not None else None
    where = f"rank {info.rank}/{info.world_size}: " if info is not None else ""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    print(f"error: {where}{' '.join(str(message).split())}", file=sys.stderr, flush=True)
    MPI = _mpi()
    if MPI is not None and MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.COMM_WORLD.Abort(code)
    os._exit(code)


_LOST = ("connection reset", "connection closed", "broken pipe", "socket closed", "read error", "nccl error",
         "connection refused")


def describe(exc: BaseException) -> str:
    """An exception as one short line, naming the likely cause when a collective failed (gloo and NCCL
    messages run over several lines and start with a source location)."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0] if lines else "").split(". This is typically")[0][:200]
    low = text.lower()
    if "timed out" in low or "timeout" in low:
        return f"a peer rank did not answer in time: it died or hangs ({text})"
    if any(k in low for k in _LOST):
        return f"a peer rank died: connection lost ({text})"
    return f"{type(exc).__name__}: {text}"


class Watchdog:
    """Ends the process when one guarded section runs past its limit: the backstop for collectives that
    a dead peer leaves waiting without an error (NCCL, or a send that gloo keeps buffered)."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self._since: float | None = None
        self._what = ""
        threading.Thread(target=self._watch, name="trt-gpt-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        self._what, self._since = what, time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit_s / 4))
            since = self._since
            if since is not None and time.monotonic() - since > self.limit_s:
                abort(f"{self._what} made no progress for {self.limit_s:.0f}s: a rank died or hangs (raise "
                      f"{TIMEOUT_ENV} if steps are legitimately this slow)")


# ----------------------------------------------------------------------------------------------
# Process groups
# ----------------------------------------------------------------------------------------------

class DistTPGroup(TPGroup):
    """The ranks of one pipeline stage: all-reduce of row-parallel partial sums, all-gather of shards."""

    def __init__(self, group: Any, size: int, rank: int, backend: str):
        self.group, self.size, self.rank, self.backend = group, size, rank, backend

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        x = x.contiguous()
        dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if self.size == 1:
            return x
        x = x.contiguous()
        if self.backend == "nccl":   # one buffer, one kernel
            out = x.new_empty((self.size,) + tuple(x.shape))
            dist.all_gather_into_tensor(out, x, group=self.group)
            return torch.cat(out.unbind(0), dim=dim)
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=dim)


@dataclass
class StageGroups:
    """One rank's view of an engine's Mapping: its TP group and its pipeline neighbours (global ranks)."""
    mapping: Mapping
    tp: TPGroup
    prev_rank: int | None       # same tp_rank in the previous stage
    next_rank: int | None
    last_stage_root: int        # tp_rank 0 of the last stage: sends the logits to rank 0


class DistWorld:
    """torch.distributed for the whole job: the default group (NCCL on GPU, gloo on CPU) for data, and a
    gloo control group with a long timeout on which rank 0 broadcasts each step's plan."""

    def __init__(self, info: RankInfo, device: torch.device):
        self.info, self.device = info, device
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.timeout_s = timeout_s()
        self.idle_timeout_s = timeout_s(IDLE_TIMEOUT_ENV, 7 * 24 * 3600.0)
        init_method = _rendezvous(info)
        try:
            dist.init_process_group(self.backend, init_method=init_method, rank=info.rank,
                                    world_size=info.world_size, timeout=_td(self.timeout_s))
            self.ctrl = dist.new_group(backend="gloo", timeout=_td(self.idle_timeout_s))
        except Exception as e:
            abort(f"cannot set up torch.distributed over {init_method} ({describe(e)})")
        self.watchdog = Watchdog(self.timeout_s + WATCHDOG_GRACE_S)
        self._stages: dict[tuple[int, int], StageGroups] = {}

    @property
    def is_leader(self) -> bool:
        return self.info.rank == 0

    def stage_groups(self, tp_size: int, pp_size: int) -> StageGroups:
        """Groups for a tp_size x pp_size mapping (created once; every rank must ask in the same order)."""
        key = (tp_size, pp_size)
        if key not in self._stages:
            mapping = Mapping(tp_size * pp_size, tp_size, pp_size, self.info.rank)
            mine = None
            for stage in range(pp_size):   # new_group is collective: every rank creates every stage's group
                ranks = list(range(stage * tp_size, (stage + 1) * tp_size))
                g = dist.new_group(ranks, timeout=_td(self.timeout_s)) if tp_size > 1 else None
                if stage == mapping.pp_rank:
                    mine = g
            tp = DistTPGroup(mine, tp_size, mapping.tp_rank, self.backend) if tp_size > 1 else TPGroup()
            r = self.info.rank
            self._stages[key] = StageGroups(
                mapping, tp, None if mapping.is_first_pp_rank else r - tp_size,
                None if mapping.is_last_pp_rank else r + tp_size, (pp_size - 1) * tp_size)
        return self._stages[key]

    def all_min(self, value: int) -> int:
        """The smallest of one integer over all ranks (control group: may follow a slow model load)."""
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.ctrl)
        return int(t.item())


def _td(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rendezvous(info: RankInfo) -> str:
    """The init_method every rank agrees on: torchrun's env://, an address rank 0 broadcasts over MPI,
    or (srun without MPI) the first node of the step with a port derived from the job id."""
    if info.launcher == "torchrun" or ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ):
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        return "env://"
    MPI = _mpi()
    if MPI is not None:
        comm = MPI.COMM_WORLD
        hosts = comm.allgather(socket.gethostname())
        one_node = len(set(hosts)) == 1
        if one_node:
            # loopback needs no routable hostname (containers often have none)
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        addr = "127.0.0.1" if one_node else hosts[0]
        port = comm.bcast(_free_port() if info.rank == 0 else None, root=0)
        return f"tcp://{addr}:{port}"
    if info.launcher == "slurm":
        addr = os.environ.get("MASTER_ADDR") or _slurm_first_node()
        port = os.environ.get("MASTER_PORT") or str(20000 + (_env_int("SLURM_JOB_ID") or 0) % 20000)
        return f"tcp://{addr}:{port}"
    raise TrtGptError(f"{info.world_size} ranks launched by {info.launcher} without mpi4py: install it "
                      "(pip install 'trt-gpt[mpi]') or set MASTER_ADDR and MASTER_PORT")


def _slurm_first_node() -> str:
    if _env_int("SLURM_STEP_NUM_NODES", "SLURM_NNODES") == 1:
        return "127.0.0.1"
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    if not out:
        raise TrtGptError("srun across nodes: cannot expand SLURM_STEP_NODELIST (no scontrol); set MASTER_ADDR")
    return out[0]


def pick_rank_device(device: str | torch.device | None, info: RankInfo) -> torch.device:
    """One GPU a rank (local rank modulo the visible GPUs) unless the user named a device; on CPU the
    cores are shared out so that ranks of one node do not oversubscribe them."""
    cuda = torch.cuda.is_available()
    if device in (None, "auto", "cuda") and cuda:
        dev = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    elif device in (None, "auto"):
        dev = torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and not cuda:
            raise TrtGptError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    elif "OMP_NUM_THREADS" not in os.environ and info.local_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_size))
    return dev


_WORLD: DistWorld | None = None
_ACTIVE: StageGroups | None = None


def init_world(device: str | torch.device | None = None, info: RankInfo | None = None) -> DistWorld:
    """Set up torch.distributed once per process; later calls return the same world."""
    global _WORLD
    if _WORLD is None:
        info = info or discover()
        _WORLD = DistWorld(info, pick_rank_device(device, info))
        atexit.register(_shutdown_world)
    return _WORLD


def exit_after_run(code: int) -> NoReturn:
    """End a multi-rank process without C++ static teardown.

    Under mpirun, native libraries (gloo, MPI, torch) occasionally abort while their static objects are
    destroyed after the work is done ("terminate called without an active exception"), turning a
    finished run into a failed one. The atexit handlers (process-group shutdown, MPI_Finalize) still run
    and the standard streams are flushed; only the static destructors are skipped.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if code != 0:
        # MPI launchers report a rank that finalized as a clean exit whatever its exit code (mpich's
        # mpirun returns 0), so a failing rank leaves MPI unfinalized to make the job fail.
        atexit.unregister(_finalize_mpi)
    atexit._run_exitfuncs()
    os._exit(code)


def _shutdown_world() -> None:
    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def use_groups(groups: StageGroups) -> Iterator[StageGroups]:
    """Make `groups` the ones an `Engine` built inside this block loads its rank with."""
    global _ACTIVE
    prev, _ACTIVE = _ACTIVE, groups
    try:
        yield groups
    finally:
        _ACTIVE = prev


def active_groups() -> StageGroups | None:
    return _ACTIVE


def current_info() -> RankInfo:
    """This process's rank: the initialised world's, else the launcher's."""
    return _WORLD.info if _WORLD is not None else discover()
