"""
FSDP smoke run on a GPU machine (not part of `make test`: FSDP through Accelerate on CPU silently runs as DDP).

    PYTHONPATH=tests accelerate launch --config_file deepspeed_configs/accelerate_fsdp.yaml --num_processes <GPUs> \
        tests/distributed/gpu_fsdp_smoke.py <workdir>

Checks that the student is FSDP-wrapped, the teacher (given as a path, loaded with fsdp_cpu_ram_efficient_loading
on) is whole and on each process's own GPU, KD runs and ends at n_KD, and the final save reloads without FSDP.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from common import VOCAB, exit_worker, llama, step_rows
from fixtures import RUN
from transformers import AutoModelForCausalLM, TrainerCallback

from salt_hf import SALTConfig, SALTTrainer


class TeacherProbe(TrainerCallback):
    def __init__(self):
        self.seen = None

    def on_step_begin(self, args, state, control, **kwargs):
        teacher = self.trainer.teacher_model
        if self.seen is None and teacher is not None:
            params = list(teacher.parameters())
            self.seen = {
                "devices": sorted({str(p.device) for p in params}),
                "all_materialised": all(not p.is_meta and p.numel() > 0 for p in params),
                "wrapper": type(teacher).__name__,
                "accelerator_device": str(self.trainer.accelerator.device),
            }


def main(workdir: str) -> None:
    work = Path(workdir)
    teacher_dir = work / "teacher"
    if not teacher_dir.exists():
        llama(64, 1, seed=1, head_scale=40.0).save_pretrained(teacher_dir)
    args = SALTConfig(
        output_dir=str(work / "out"),
        max_steps=4,
        kd_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        bf16=True,
        **RUN,
    )
    trainer = SALTTrainer(
        model=llama(128, 2, seed=0), teacher_model=str(teacher_dir), args=args, train_dataset=step_rows(8)
    )
    probe = TeacherProbe()
    probe.trainer = trainer
    trainer.add_callback(probe)
    trainer.train()
    kd = [h["kd_weight"] for h in trainer.state.log_history if "kd_weight" in h]
    report = {
        "fsdp": trainer.is_fsdp_enabled,
        "student_wrapper": type(trainer.model_wrapped).__name__,
        "student_class_mro": [c.__name__ for c in type(trainer.model).__mro__][:3],
        "teacher": probe.seen,
        "kd_weights": kd,
        "teacher_released": trainer.teacher_model is None,
        "world_size": trainer.accelerator.num_processes,
    }
    trainer.save_model(str(work / "final"))
    if trainer.accelerator.is_main_process:
        reloaded = AutoModelForCausalLM.from_pretrained(work / "final")
        report["reloaded_vocab"] = reloaded.config.vocab_size
        logits = reloaded(input_ids=torch.arange(8)[None] % VOCAB).logits
        report["reloaded_finite"] = bool(torch.isfinite(logits).all())
        print("FSDP_SMOKE " + json.dumps(report))
    assert probe.seen["all_materialised"] and probe.seen["devices"] == [probe.seen["accelerator_device"]], probe.seen
    assert probe.seen["accelerator_device"].startswith("cuda"), probe.seen
    assert kd == [0.5, 0.5, 0.0, 0.0] and trainer.teacher_model is None
    exit_worker()


if __name__ == "__main__":
    main(sys.argv[1])
