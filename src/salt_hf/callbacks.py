"""Callbacks of SALTTrainer: side effects only, through public methods. Every decision comes from `global_step`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from accelerate.logging import get_logger
from transformers import TrainerCallback

if TYPE_CHECKING:
    from .trainer import SALTTrainer

logger = get_logger(__name__)


class TeacherLifecycleCallback(TrainerCallback):
    """
    Places the teacher when a run (or a resumed run) starts inside the KD stage, and releases it on every process as
    soon as `global_step` reaches n_KD. A run resumed from a checkpoint past n_KD therefore never loads it.
    """

    def __init__(self, trainer: SALTTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.resolve_kd_steps(state.max_steps)
        if self.trainer.kd_stop is not None:  # kd_steps="auto": the test's window and outcome, on resume
            stored = state.stateful_callbacks.get(type(self.trainer.kd_stop).__name__)
            self.trainer.kd_stop.restore(stored, self.trainer.kd_sampler)
        if self.trainer.kd_active(state.global_step):
            self.trainer.place_teacher()
        else:
            self._release(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.update_kd_stop(state.global_step)
        if not self.trainer.kd_active(state.global_step):
            self._release(state.global_step)

    def _release(self, step: int) -> None:
        if self.trainer.teacher.release():
            logger.info(f"KD stage over at step {step}: teacher released.", main_process_only=True)
