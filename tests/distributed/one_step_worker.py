"""
One SGD step of SALTTrainer under torchrun (CPU, gloo), for tests/distributed/test_one_step.py.

    PYTHONPATH=tests torchrun --standalone --nproc_per_node 2 tests/distributed/one_step_worker.py --backend zero3 \
        --teacher DIR --out DIR --case 2x2:replicate:logits --case 2x1x2:zero3:fused_linear

Each `--case WORLDxBATCH[xACCUM]:PLACEMENT[:FLAG...]` (flags: `no_process_factor`, `stored` (the teacher's stored
targets from `--targets DIR` instead of the teacher), and the `loss_implementation` `fused_linear` or `logits`, else
"auto") trains a fresh student (seed 0) for one optimizer step on the same 4
sequences and writes, on rank 0, `<out>/<backend>-<case>.pt` with the student's full weights (gathered under ZeRO-3),
the loss implementation the run used and what each rank saw of the teacher. Several cases run in one launch:
starting processes, importing DeepSpeed and joining the process group are what costs time here, not the step.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cpu_deepspeed
import torch
import torch.distributed as dist
from common import DS_CONFIGS, exit_worker, step_dataset, student_model
from fixtures import one_sgd_step_config

from salt_hf import SALTTrainer
from salt_hf.teacher import num_parameters


class RecordingTrainer(SALTTrainer):
    """Records, per process, how the teacher was placed and how much of it this process held."""

    teacher_record: dict | None = None

    def place_teacher(self):
        placed = super().place_teacher()
        if self.teacher_model is not None and self.teacher_record is None:
            module = getattr(self.teacher_model, "module", self.teacher_model)  # a DeepSpeed engine wraps it
            params = list(module.parameters())
            self.teacher_record = {
                "placement": self.teacher.placement,
                "wrapper": type(self.teacher_model).__name__,
                "partitioned": all(hasattr(p, "ds_id") for p in params),
                "full_numel": num_parameters(module),
                "local_numel": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params),
                "device": str(params[0].device),
            }
        return placed


class NoProcessFactorTrainer(RecordingTrainer):
    """Negative control: drops the `* num_processes` factor of SALTTrainer.compute_loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if return_outputs:
            return loss[0] / self.accelerator.num_processes, loss[1]
        return loss / self.accelerator.num_processes


def gathered_flat_params(model: torch.nn.Module) -> torch.Tensor:
    params = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):  # a collective: every rank
            return torch.cat([p.detach().reshape(-1).clone() for p in params])
    return torch.cat([p.detach().reshape(-1).clone() for p in params])


def run_case(case: str, backend: str, teacher_dir: str, out_dir: Path, world: int, targets: str | None = None) -> None:
    shape, placement, *flags = case.split(":")
    sizes = [int(x) for x in shape.split("x")]
    case_world, batch, accum = (sizes + [1])[:3]
    if case_world != world:
        raise SystemExit(f"case {case} needs {case_world} processes, launched with {world}")
    trainer_cls = NoProcessFactorTrainer if "no_process_factor" in flags else RecordingTrainer
    implementation = next((f for f in flags if f in ("fused_linear", "logits")), "auto")
    name = f"{backend}-{case.replace(':', '-')}"
    # On a machine without GPUs, Accelerate runs DDP over gloo only when told to use the CPU (else it silently runs
    # each process alone); DeepSpeed finds the CPU through DS_ACCELERATOR=cpu.
    args = one_sgd_step_config(
        str(out_dir / f"run-{name}"),
        batch,
        accum,
        deepspeed=DS_CONFIGS.get(backend),
        teacher_placement=placement,
        use_cpu=backend == "ddp",
        loss_implementation=implementation,
        teacher_targets=targets if "stored" in flags else None,
    )
    teacher = None if "stored" in flags else teacher_dir
    trainer = trainer_cls(model=student_model(), teacher_model=teacher, args=args, train_dataset=step_dataset())
    trainer.train()
    weights = gathered_flat_params(trainer.model)
    records = [None] * world
    dist.all_gather_object(records, {**(trainer.teacher_record or {}), "released": trainer.teacher_model is None})
    if dist.get_rank() == 0:
        result = {
            "weights": weights,
            "ranks": records,
            "deepspeed": trainer.is_deepspeed_enabled,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "num_processes": trainer.accelerator.num_processes,
            "loss_implementation": trainer.fused_head.implementation,
            "student_partitioned": any(hasattr(p, "ds_id") for p in trainer.model.parameters()),
        }
        torch.save(result, out_dir / f"{name}.pt")
    dist.barrier()


def main() -> None:
    cpu_deepspeed.patch()  # a no-op on GPUs
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["ddp", *DS_CONFIGS], required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--case", action="append", required=True)
    parser.add_argument("--targets", default=None, help="a store of the teacher's targets, for `stored` cases")
    cli = parser.parse_args()
    out_dir = Path(cli.out)
    world = int(os.environ["WORLD_SIZE"])
    for case in cli.case:
        run_case(case, cli.backend, cli.teacher, out_dir, world, cli.targets)
    exit_worker()


if __name__ == "__main__":
    main()
