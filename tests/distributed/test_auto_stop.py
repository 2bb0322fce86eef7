"""
kd_steps="auto" on two real processes (torchrun, gloo) that see different text: rank 0 a sequence its teacher knows
by heart, rank 1 random tokens the teacher has never seen. Decided per rank, the test would fire on different steps
(the worker checks with a per-rank copy); decided from the sums over both ranks, it fires on the same step on both,
the one the summed statistics give, and both ranks run the teacher on exactly the same steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from common import SEQ, VOCAB, check, llama, torchrun
from datasets import Dataset
from fixtures import config

from salt_hf import SALTTrainer
from salt_hf.kd_stop import AutoKDStop

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("auto_stop_worker.py")
STEPS, ROWS_PER_RANK = 12, 2


def known_row() -> torch.Tensor:
    return torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(7))


def memorising_teacher(tmp_path: Path) -> str:
    """A 1-layer teacher trained (plain SALTTrainer, no teacher) until it knows `known_row` by heart."""
    row = known_row().tolist()
    ds = Dataset.from_dict({"input_ids": [row] * 8, "labels": [row] * 8})
    args = config(tmp_path, output_dir=str(tmp_path / "teacher_run"), max_steps=60, learning_rate=1e-2)
    trainer = SALTTrainer(model=llama(16, 1, seed=1), args=args, train_dataset=ds)
    trainer.train()
    trainer.model.save_pretrained(tmp_path / "teacher")
    return str(tmp_path / "teacher")


def rank_rows(tmp_path: Path) -> str:
    """Blocks of ROWS_PER_RANK rows, in order: the known row for rank 0, fresh random rows for rank 1."""
    random_rows = torch.randint(0, VOCAB, (STEPS * ROWS_PER_RANK, SEQ), generator=torch.Generator().manual_seed(8))
    blocks = []
    for step in range(STEPS):
        blocks.append(known_row().repeat(ROWS_PER_RANK, 1))
        blocks.append(random_rows[step * ROWS_PER_RANK : (step + 1) * ROWS_PER_RANK])
    torch.save(torch.cat(blocks), tmp_path / "rows.pt")
    return str(tmp_path / "rows.pt")


def test_two_ranks_with_different_data_stop_on_the_same_step(tmp_path):
    teacher, data = memorising_teacher(tmp_path), rank_rows(tmp_path)
    proc, _ = torchrun(WORKER, ["--teacher", teacher, "--data", data, "--out", str(tmp_path)], nproc=2)
    check(proc)
    ranks = torch.load(tmp_path / "result.pt", weights_only=False)
    local = [r["local_stop_step"] for r in ranks]
    assert local[0] != local[1], f"the ranks' own statistics should disagree here: {local}"
    stops = {r["stop_step"] for r in ranks}
    assert len(stops) == 1 and ranks[0]["teacher_steps"] == ranks[1]["teacher_steps"]
    (stop,) = stops
    assert sorted(set(ranks[0]["teacher_steps"])) == list(range(stop)) and all(r["released"] for r in ranks)
    # the decision is the one of the summed statistics
    summed = AutoKDStop(window=2, min_step=0, max_step=9)
    for step, (a, b) in enumerate(zip(ranks[0]["local_sums"], ranks[1]["local_sums"], strict=True), start=1):
        if summed.update(step, [x + y for x, y in zip(a, b, strict=True)]) is not None:
            break
    assert summed.stop_step == stop
    assert [h["kd_stop_step"] for h in ranks[0]["logged"]] == [stop]
