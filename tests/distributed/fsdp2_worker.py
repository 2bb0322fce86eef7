"""
One SGD step of SALT on an FSDP2 student below the Trainer, for tests/distributed/test_fsdp2.py (CPU, gloo).

    PYTHONPATH=tests torchrun --standalone --nproc_per_node 2 tests/distributed/fsdp2_worker.py --out DIR \
        --case untied --case tied

The Trainer refuses FSDP without a GPU ("Using fsdp only works in distributed training" / FSDP through Accelerate on
CPU runs as DDP), so each case builds a SALTTrainer with a plain student, then shards that student in place with
`fully_shard` on every decoder layer and on the root (as Accelerate's FSDP2 does), and runs what a training step runs:
`SALTTrainer.compute_loss` on this process's half of the batch with the global token count, backward, and a plain
SGD step (lr 0.5) on the sharded parameters. The teacher stays replicated and outside FSDP (`Teacher.place`).
Each `--case` is `tied` or `untied` (the student's output layer tied to its input embedding or not), optionally
`:no_process_factor` (negative control: the loss without SALTTrainer's `* num_processes`). Rank 0 writes
`<out>/fsdp2-<case>.pt`: the full weights after the step (`DTensor.full_tensor()`), the loss implementation the run
used and whether the student's parameters were really sharded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from common import exit_worker, step_rows, student_model, teacher_model
from fixtures import one_sgd_step_config
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from salt_hf import SALTTrainer

LR = 0.5  # fixtures.one_sgd_step_config's


def student(case: str) -> torch.nn.Module:
    model = student_model()
    if case.startswith("tied"):
        model.config.tie_word_embeddings = True
        model.tie_weights()
    return model


def rank_batch(rank: int, world: int) -> tuple[dict[str, torch.Tensor], int]:
    """This process's share of the 4 sequences and the number of supervised (shifted) tokens of all of them."""
    rows = step_rows(4)
    per_rank = len(rows) // world
    mine = rows[rank * per_rank : (rank + 1) * per_rank]
    total = sum(sum(1 for t in row["labels"][1:] if t != -100) for row in rows)
    batch = {key: torch.tensor([row[key] for row in mine]) for key in ("input_ids", "labels")}
    return batch, total


def run_case(case: str, out_dir: Path) -> None:
    args = one_sgd_step_config(
        str(out_dir / f"run-{case.replace(':', '-')}"), 2, 1, use_cpu=True, loss_implementation="fused_linear"
    )
    trainer = SALTTrainer(model=student(case), teacher_model=teacher_model(), args=args)  # joins the process group
    rank, world = dist.get_rank(), dist.get_world_size()
    model = trainer.model
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    model.train()
    batch, total = rank_batch(rank, world)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(total))
    if case.endswith("no_process_factor"):
        loss = loss / world
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-LR)
    weights = torch.cat([p.full_tensor().detach().reshape(-1) for p in model.parameters()])  # a collective
    sharded = all(isinstance(p, DTensor) for p in model.parameters())
    local = sum(p.to_local().numel() for p in model.parameters())
    if rank == 0:
        result = {
            "weights": weights,
            "loss_implementation": trainer.fused_head.implementation,
            "reason": trainer.fused_head.reason,
            "sharded": sharded and local < weights.numel(),
            "tied": model.lm_head.weight is model.model.embed_tokens.weight,
            "teacher_sharded": any(isinstance(p, DTensor) for p in trainer.teacher_model.parameters()),
            "world": world,
        }
        torch.save(result, out_dir / f"fsdp2-{case.replace(':', '-')}.pt")
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--case", action="append", required=True)
    cli = parser.parse_args()
    for case in cli.case:
        run_case(case, Path(cli.out))
    exit_worker()


if __name__ == "__main__":
    main()
