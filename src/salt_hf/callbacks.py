"""Callbacks of SALTTrainer: side effects only. Every decision is derived from `state.global_step`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import TrainerCallback

if TYPE_CHECKING:
    from .trainer import SALTTrainer


class TeacherLifecycleCallback(TrainerCallback):
    """
    Loads the teacher when a run (or a resumed run) starts inside the KD stage, and releases it on every process as
    soon as `global_step` reaches n_KD. A run resumed from a checkpoint past n_KD therefore never loads it.
    """

    def __init__(self, trainer: SALTTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._resolve_kd_steps(state.max_steps)
        if self.trainer.kd_active(state.global_step):
            self.trainer._ensure_teacher()
        else:
            self.trainer.release_teacher()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.trainer.kd_active(state.global_step):
            self.trainer.release_teacher()
