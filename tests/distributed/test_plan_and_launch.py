"""Single-process pieces of the multi-rank runtime: the step plan's wire format and micro-batch split,
rank discovery from each launcher's variables, and the errors a wrong launch gets."""
from __future__ import annotations

import os

import pytest
import torch

from trt_gpt import distributed
from trt_gpt.distributed import RankInfo, discover
from trt_gpt.errors import TrtGptError
from trt_gpt.kernels.metadata import AttentionMetadata
from trt_gpt.runtime.step_plan import StepPlan, merge_logits

LAUNCH_PREFIXES = ("PMI_", "OMPI_", "PMIX_", "SLURM_", "MV2_", "MPI_LOCAL")
LAUNCH_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def bare_env(monkeypatch):
    """No launcher variables at all, and no mpi4py import (it would initialise MPI in the test process)."""
    for k in list(os.environ):
        if k in LAUNCH_NAMES or k.startswith(LAUNCH_PREFIXES):
            monkeypatch.delenv(k)
    monkeypatch.setattr(distributed, "_mpi", lambda: None)
    return monkeypatch


def _plan(q_lens: list[int], rows: list[int] | None, width: int = 3, mbs: int = 1) -> StepPlan:
    ctx = [q + 2 * i for i, q in enumerate(q_lens)]
    cu = [0]
    for q in q_lens:
        cu.append(cu[-1] + q)
    t = cu[-1]
    meta = AttentionMetadata(
        cu_q_lens=torch.tensor(cu, dtype=torch.int32), context_lens=torch.tensor(ctx, dtype=torch.int32),
        block_tables=torch.arange(len(q_lens) * width, dtype=torch.int32).view(len(q_lens), width),
        slot_mapping=torch.arange(100, 100 + t), max_q_len=max(q_lens), max_context_len=max(ctx),
        q_lens_host=q_lens, context_lens_host=ctx)
    return StepPlan(torch.arange(t) * 7, torch.arange(t) + 1, meta, None if rows is None else torch.tensor(rows),
                    16, mbs, copies=([4, 5], [9, 8]))


def test_plan_survives_the_wire():
    plan = _plan([3, 1, 5], [2, 3, 8])
    header, payload = plan.encode()
    assert payload.shape[0] == StepPlan.payload_len(header)
    got = StepPlan.decode(header, payload, torch.device("cpu"))
    for name in ("input_ids", "positions", "logits_rows"):
        assert torch.equal(getattr(got, name), getattr(plan, name)), name
    for name in ("cu_q_lens", "context_lens", "block_tables", "slot_mapping"):
        assert torch.equal(getattr(got.meta, name), getattr(plan.meta, name)), name
        assert getattr(got.meta, name).dtype == getattr(plan.meta, name).dtype, name
    assert (got.meta.max_q_len, got.meta.max_context_len, got.meta.q_lens_host, got.meta.context_lens_host) == \
        (5, 9, [3, 1, 5], plan.meta.context_lens_host)
    assert (got.window, got.micro_batches, got.copies) == (16, 1, ([4, 5], [9, 8]))
    none = StepPlan.decode(*_plan([2], None).encode(), torch.device("cpu"))
    assert none.logits_rows is None and none.num_rows == 2


@pytest.mark.parametrize("q_lens,mbs", [([5, 1, 1, 7, 2], 3), ([1, 1], 4), ([9, 1, 1, 1], 2), ([4], 2)])
def test_micro_batches_cover_the_step_in_order(q_lens, mbs):
    plan = _plan(q_lens, None, mbs=mbs)
    parts = plan.split()
    assert len(parts) == min(mbs, len(q_lens)) and all(p.meta.num_seqs > 0 for p in parts)
    assert torch.equal(torch.cat([p.input_ids for p in parts]), plan.input_ids)
    assert torch.equal(torch.cat([p.meta.slot_mapping for p in parts]), plan.meta.slot_mapping)
    assert torch.equal(torch.cat([p.meta.block_tables for p in parts]), plan.meta.block_tables)
    assert sum((p.meta.q_lens_host for p in parts), []) == q_lens
    for p in parts:   # each part's metadata is self-consistent
        assert p.meta.cu_q_lens[0] == 0 and p.meta.cu_q_lens[-1] == p.num_tokens
        assert p.meta.max_q_len == max(p.meta.q_lens_host)


def test_merged_logits_follow_the_requested_rows():
    """Rows not in ascending order come back in the order asked for, whatever the micro-batches."""
    rows = [15, 0, 6, 3, 9]
    plan = _plan([5, 1, 1, 7, 2], rows, mbs=3)
    parts = plan.split()
    # a fake model: a row's 'logits' are its index in the whole step
    logits = [(p.logits_rows + p.token_start).float().unsqueeze(1) for p in parts]
    assert merge_logits(plan, parts, logits).squeeze(1).tolist() == rows


def test_discover_reads_each_launcher(bare_env):
    assert discover() == RankInfo()
    bare_env.setenv("SLURM_PROCID", "3")
    bare_env.setenv("SLURM_NTASKS", "8")
    assert discover() == RankInfo(), "a batch script outside srun is one process"
    for k, v in dict(SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS="8", SLURM_LOCALID="1",
                     SLURM_STEP_TASKS_PER_NODE="4(x2)").items():
        bare_env.setenv(k, v)
    assert discover() == RankInfo(3, 8, 1, 4, "slurm")
    for k, v in dict(PMI_RANK="1", PMI_SIZE="2", MPI_LOCALRANKID="1", MPI_LOCALNRANKS="2").items():
        bare_env.setenv(k, v)
    assert discover() == RankInfo(1, 2, 1, 2, "mpi"), "MPI variables win over srun's (mpirun inside srun)"
    for k, v in dict(RANK="5", WORLD_SIZE="6", LOCAL_RANK="2", LOCAL_WORLD_SIZE="3").items():
        bare_env.setenv(k, v)
    assert discover() == RankInfo(5, 6, 2, 3, "torchrun")
    bare_env.setenv("WORLD_SIZE", "six")
    with pytest.raises(TrtGptError, match="WORLD_SIZE='six' is not an integer"):
        discover()


def test_open_mpi_variables(bare_env):
    for k, v in dict(OMPI_COMM_WORLD_RANK="2", OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_LOCAL_RANK="0",
                     OMPI_COMM_WORLD_LOCAL_SIZE="2").items():
        bare_env.setenv(k, v)
    assert discover() == RankInfo(2, 4, 0, 2, "mpi")


def test_bad_timeout_is_one_line(bare_env):
    bare_env.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(TrtGptError, match="TRT_GPT_DIST_TIMEOUT='soon': expected a positive number"):
        distributed.timeout_s()


def test_distributed_llm_checks_the_world_size_first(bare_env, tmp_path):
    """One process on a two-rank engine: the mismatch is reported before any process group is made."""
    from trt_gpt.checkpoint import write_json
    from trt_gpt.config import BuildConfig, ModelConfig
    from trt_gpt.mapping import Mapping
    from trt_gpt.runtime.distributed_llm import DistributedLLM

    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      mapping=Mapping(2, 2, 1))
    tmp_path.mkdir(exist_ok=True)
    write_json(tmp_path / "config.json", {"version": "0.1", "pretrained_config": cfg.to_dict(),
                                          "build_config": BuildConfig().to_dict()})
    with pytest.raises(TrtGptError, match=r"engine built for 2 rank\(s\) \(tp_size 2 x pp_size 1\) but 1 were "
                                          r"launched; launch with -np 2"):
        DistributedLLM(tmp_path, device="cpu")
    assert distributed._WORLD is None
