"""The packed step's regions: 16-byte aligned, in order, tables last (an upload of b rows is a prefix), and a
new per-token column appears in both the executor's and the decode graphs' layouts."""
from __future__ import annotations

import numpy as np

from trt_gpt.runtime import step_layout
from trt_gpt.runtime.step_layout import StepLayout


def test_step_regions_are_aligned_ordered_and_sized():
    lay = StepLayout.for_step(tokens=5, seqs=2, table_width=3)
    assert [n for n, _ in lay.regions] == ["ids", "positions", "slots", "rows", "cu", "ctx", "tables"]
    assert list(lay.offsets.values()) == [0, 8, 16, 24, 28, 32, 36] and lay.size == 44
    buf = np.arange(lay.size)
    assert lay.view(buf, "cu").tolist() == [28, 29, 30] and lay.view(buf, "tables", 3).tolist() == [36, 37, 38]


def test_decode_graph_regions_keep_the_upload_a_prefix():
    lay = StepLayout.for_decode_graphs(rows=6, table_width=4)
    assert [n for n, _ in lay.regions][-1] == "tables"
    assert all(o % 4 == 0 for o in lay.offsets.values())
    assert lay.offsets["tables"] == 6 * 8 and lay.size == 6 * 8 + 24


def test_a_per_token_column_reaches_both_layouts(monkeypatch):
    monkeypatch.setattr(step_layout, "TOKEN_COLUMNS", step_layout.TOKEN_COLUMNS + ("adapter_slot",))
    for lay in (StepLayout.for_step(3, 1, 2), StepLayout.for_decode_graphs(3, 2)):
        assert lay.lengths["adapter_slot"] == lay.lengths["ids"]
        assert lay.offsets["adapter_slot"] == lay.offsets["slots"] + 4
