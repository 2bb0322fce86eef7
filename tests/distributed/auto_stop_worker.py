"""
SALTTrainer with kd_steps="auto" under torchrun (CPU, gloo), for tests/distributed/test_auto_stop.py.

    PYTHONPATH=tests torchrun --standalone --nproc_per_node 2 tests/distributed/auto_stop_worker.py \
        --teacher DIR --data FILE --out DIR

The rows are read in order (no shuffling), `--rows-per-rank` at a time per process, so each rank trains on its own
kind of text. Besides the trainer's test (fed with the sums over both ranks), each rank feeds a copy of the test with
its own sums only: what a per-rank decision would have done. Rank 0 writes `<out>/result.pt`: per rank, the
trainer's decision, the per-rank copy's decision, the steps of its teacher forwards and its local per-step sums.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.distributed as dist
from common import exit_worker
from datasets import Dataset
from fixtures import config
from torch.utils.data import SequentialSampler

from salt_hf import SALTTrainer
from salt_hf.kd_stop import AutoKDStop


class RecordingTrainer(SALTTrainer):
    local_stop: AutoKDStop | None = None
    local_sums: list | None = None
    teacher_steps: list | None = None

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(self.train_dataset)

    def update_kd_stop(self, step: int) -> None:
        if self.local_stop is None:
            self.local_stop, self.local_sums = copy.deepcopy(self.kd_stop), []
        if not self.kd_stop.decided:
            sums = self._step_sums.tolist()  # this rank's alone, before the trainer sums over processes
            self.local_sums.append(sums)
            self.local_stop.update(step, sums)
        super().update_kd_stop(step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and self.current_kd_weight(self.state.global_step) > 0:
            self.teacher_steps.append(self.state.global_step)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rows-per-rank", type=int, default=2)
    cli = parser.parse_args()
    from common import student_model

    rows = torch.load(cli.data)
    ds = Dataset.from_dict({"input_ids": rows.tolist(), "labels": rows.tolist()})
    out = Path(cli.out)
    args = config(
        out,
        output_dir=str(out / "run"),
        max_steps=cli.steps,
        per_device_train_batch_size=cli.rows_per_rank,
        learning_rate=3e-3,
        kd_steps="auto",
        kd_auto_window=2,
        kd_auto_min_ratio=0.0,
        kd_auto_max_ratio=0.75,
        use_cpu=True,
    )
    trainer = RecordingTrainer(model=student_model(), teacher_model=cli.teacher, args=args, train_dataset=ds)
    trainer.teacher_steps = []
    trainer.train()
    record = {
        "stop_step": trainer.kd_stop.stop_step,
        "local_stop_step": trainer.local_stop.stop_step,
        "teacher_steps": trainer.teacher_steps,
        "local_sums": trainer.local_sums,
        "released": trainer.teacher_model is None,
        "logged": [h for h in trainer.state.log_history if "kd_stop_step" in h],
    }
    records = [None] * dist.get_world_size()
    dist.all_gather_object(records, record)
    if dist.get_rank() == 0:
        torch.save(records, out / "result.pt")
    exit_worker()


if __name__ == "__main__":
    main()
