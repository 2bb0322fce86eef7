"""
Worker of test_scoring.py: scores one dataset with one teacher under `torchrun` (every process scores its share of
the shards) and saves, from rank 0, the scores and how many rows each rank ran through the teacher.

    PYTHONPATH=tests torchrun --standalone --nproc_per_node 2 tests/distributed/score_worker.py --cache DIR --out FILE
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from accelerate import PartialState
from common import exit_worker, teacher_model

from salt_hf.selection import score_dataset

ROWS, SHARD, BATCH = 37, 8, 4
SCORING = dict(top_k=48, batch_size=BATCH, shard_size=SHARD, show_progress=False)  # the test's one-process run too


def scoring_rows() -> list[dict[str, list[int]]]:
    """Rows of unequal lengths and supervision, the same on every process."""
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(ROWS):
        n = 12 + i % 9
        ids = torch.randint(0, 96, (n,), generator=g).tolist()
        labels = [t if j < n - i % 4 else -100 for j, t in enumerate(ids)]
        out.append({"input_ids": ids, "labels": labels})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    state = PartialState(cpu=not torch.cuda.is_available())  # real gloo ranks on a machine without GPUs
    teacher = teacher_model()
    rows_seen = [0]

    def count(module, args, kwargs, output):
        rows_seen[0] += kwargs["input_ids"].shape[0]

    teacher.register_forward_hook(count, with_kwargs=True)
    scores = score_dataset(teacher, scoring_rows(), cache_dir=args.cache, **SCORING)
    counts = [None] * state.num_processes
    dist.all_gather_object(counts, rows_seen[0])
    if state.is_main_process:
        torch.save(
            {"scores": torch.from_numpy(scores), "rows_per_rank": counts, "world": state.num_processes}, args.out
        )
    exit_worker()


if __name__ == "__main__":
    main()
