"""Fixtures of the distributed tests (imported by name into the test modules that use them)."""

from __future__ import annotations

import pytest
import torch
from common import one_step_args, step_dataset, student_model, teacher_model

from salt_hf import SALTTrainer


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("teacher")
    teacher_model().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def reference(teacher_dir, tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, after one step) for 1 process x 4 sequences, no distributed wrapper."""
    out = tmp_path_factory.mktemp("reference")
    args = one_step_args(str(out), batch=4, accum=1, use_cpu=True)
    trainer = SALTTrainer(model=student_model(), teacher_model=teacher_dir, args=args, train_dataset=step_dataset())
    trainer.train()
    return flat(student_model()), flat(trainer.model)
