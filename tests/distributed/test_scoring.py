"""SALT_DS scoring spread over two real processes gives the scores of one process, and a second run reuses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from common import check, teacher_model, torchrun, worker_threads
from score_worker import ROWS, SCORING, scoring_rows

from salt_hf.selection import score_dataset

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("score_worker.py")


def test_two_process_scoring_equals_one_process_and_is_cached(tmp_path):
    with worker_threads():  # the kernels of the workers, on the same batches: equal scores, whichever rank ran them
        single = score_dataset(teacher_model(), scoring_rows(), cache_dir=tmp_path / "single", **SCORING)
    assert single.shape == (ROWS,) and np.isfinite(single).sum() >= ROWS // 2

    args = ["--cache", str(tmp_path / "shared"), "--out", str(tmp_path / "first.pt")]
    proc, seconds = torchrun(WORKER, args)
    check(proc)
    first = torch.load(tmp_path / "first.pt")
    print(f"two-process scoring: {seconds:.1f} s, rows per rank {first['rows_per_rank']}")
    assert first["world"] == 2
    # 5 shards of 8 rows (the last has 5) dealt round-robin: rank 0 scores 3 shards, rank 1 two
    assert first["rows_per_rank"] == [8 + 8 + 5, 8 + 8]
    np.testing.assert_allclose(first["scores"].numpy(), single, rtol=1e-6, atol=1e-6, equal_nan=True)

    args[-1] = str(tmp_path / "second.pt")
    proc, seconds = torchrun(WORKER, args)
    check(proc)
    second = torch.load(tmp_path / "second.pt")
    print(f"second two-process run: {seconds:.1f} s, rows per rank {second['rows_per_rank']}")
    assert second["rows_per_rank"] == [0, 0]  # read from the cache, the teacher never ran
    assert torch.equal(torch.nan_to_num(second["scores"], nan=-1.0), torch.nan_to_num(first["scores"], nan=-1.0))
