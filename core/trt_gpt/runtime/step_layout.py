"""Where each input of a packed step lives in its one int32 upload: the layout shared by every packer.

A step's inputs travel to the device as one int32 buffer (one host-to-device copy, or one staged read
inside a decode graph), cut into regions: the per-token columns, the per-sequence ones and the block
tables. Two packers fill such buffers: `Executor._pack` (any step) and, through `Executor._pack_decode`, the
decode CUDA graphs' pinned mirrors (`cuda_graphs.DecodeGraphs`); both take their regions from here.

Every region starts on a 16-byte boundary: Triton specialises kernels on pointer alignment, so unaligned
views (offsets that depend on T and B) would compile a new kernel variant for a new batch shape mid-serving.

A per-token side input (an adapter slot, a prompt-table row) is one more name in `TOKEN_COLUMNS`: both
layouts then carry it, a packer fills `view(buf, name)` next to the positions, and the model reads the
device view by the same name. It rides in the same upload, so CUDA graphs stay valid as its values change.
The multi-rank wire format (`step_plan.StepPlan`) names its token columns explicitly and needs the column
added there as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# int32, one entry a token; the model's inputs in this order
TOKEN_COLUMNS: tuple[str, ...] = ("ids", "positions", "slots")


def _aligned(n: int) -> int:
    return (n + 3) // 4 * 4


@dataclass(frozen=True)
class StepLayout:
    """Consecutive named int32 regions of a packed buffer; `regions` keeps (name, length) in order."""
    regions: tuple[tuple[str, int], ...]
    offsets: dict[str, int] = field(init=False)
    lengths: dict[str, int] = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        offsets, o = {}, 0
        for name, n in self.regions:
            offsets[name] = o
            o += _aligned(n)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "lengths", dict(self.regions))
        object.__setattr__(self, "size", o)

    def view(self, buf, name: str, n: int | None = None):
        """The region `name` of `buf` (a numpy array or a tensor), or its first `n` entries."""
        o = self.offsets[name]
        return buf[o:o + (self.lengths[name] if n is None else n)]

    @classmethod
    def for_step(cls, tokens: int, seqs: int, table_width: int) -> "StepLayout":
        """An executor step: token columns [T]; last-token rows [B], cu_q_lens [B+1], context lens [B];
        block tables [B * table_width] (last, so a step's upload is a prefix of the buffer)."""
        return cls(tuple((c, tokens) for c in TOKEN_COLUMNS)
                   + (("rows", seqs), ("cu", seqs + 1), ("ctx", seqs), ("tables", seqs * table_width)))

    @classmethod
    def for_decode_graphs(cls, rows: int, table_width: int) -> "StepLayout":
        """The decode graphs' static buffer of `rows` one-token sequences: token columns, context lens, the
        feed (a row's token from the previous replay's picks) and aux ([0]: the host picks buffer), each
        padded to a multiple of 4 rows; block tables last (the upload of b rows is its prefix up to b
        table rows)."""
        p = _aligned(rows)
        return cls(tuple((c, p) for c in TOKEN_COLUMNS) + (("ctx", p), ("feed", p), ("aux", p),
                                                             ("tables", rows * table_width)))
