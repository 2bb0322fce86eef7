"""
SALT with layer-wise learning rates and sequence-length warmup under DeepSpeed ZeRO-2, for
tests/distributed/test_speedups_deepspeed.py:

    PYTHONPATH=tests DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 1 tests/distributed/speedups_worker.py \
        --out DIR

The Trainer builds the optimizer (the ZeRO config has no 'optimizer' section), SALTTrainer splits its groups by layer,
then DeepSpeed wraps it. Writes, on rank 0, `<out>/zero2.pt` with the student's weights and the learning rate and
depth of every parameter group of the DeepSpeed optimizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cpu_deepspeed
import torch
import torch.distributed as dist
from common import DS_CONFIGS, exit_worker, step_dataset, student_model, teacher_model
from fixtures import RUN

from salt_hf import SALTConfig, SALTTrainer

LR, DECAY = 1e-2, 0.5


def speedup_args(output_dir: str, **kwargs) -> SALTConfig:
    """Three AdamW steps over rows of 6, 12, 24 tokens (doubling warmup), layer-wise rates halving downwards."""
    values = dict(
        output_dir=output_dir,
        max_steps=3,
        per_device_train_batch_size=4,
        optim="adamw_torch",
        learning_rate=LR,
        # AdamW's step lr * m / (sqrt(v) + eps) moves by at most about lr / eps times a change of the gradient. At the
        # default eps = 1e-8 that is 1e6: a rounding difference of a gradient near zero (1e-11 from adding the same
        # terms in another order) would move a weight by 1e-5, and the comparison with the run without DeepSpeed
        # would hold only while the two runs stay bit-equal. At 1e-3 the factor is 10, so three steps keep such a
        # difference under 1e-6; a gradient far above eps still gets a step of about lr.
        adam_epsilon=1e-3,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        kd_weight=0.5,
        kd_steps=2,
        layerwise_lr_decay=DECAY,
        seq_warmup_steps=2,
        seq_warmup_schedule="doubling",
        seq_warmup_start_length=6,
    )
    return SALTConfig(**{**RUN, **values, **kwargs})


def train(args: SALTConfig) -> SALTTrainer:
    trainer = SALTTrainer(
        model=student_model(), teacher_model=teacher_model(), args=args, train_dataset=step_dataset(12)
    )
    trainer.train()
    return trainer


def main() -> None:
    cpu_deepspeed.patch()  # a no-op on GPUs
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    trainer = train(speedup_args(str(out / "run"), deepspeed=DS_CONFIGS["zero2"]))
    if dist.get_rank() == 0:
        groups = [{"lr": g["lr"], "layer_depth": g["layer_depth"]} for g in trainer.optimizer.param_groups]
        weights = torch.cat([p.detach().reshape(-1).clone() for p in trainer.model.parameters()])
        torch.save(
            {
                "weights": weights,
                "groups": groups,
                "deepspeed": trainer.is_deepspeed_enabled,
                "optimizer": type(trainer.model_wrapped.optimizer).__name__,
                "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            },
            out / "zero2.pt",
        )
    exit_worker()


if __name__ == "__main__":
    main()
