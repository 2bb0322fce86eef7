"""`kd_steps="auto"`: the KD stage ends itself once the student has caught up with its teacher.

On every KD micro-batch the fused loss returns the student's and the teacher's next-token loss on the same
supervised tokens (`SALTLossOutput.nll` and `.teacher_nll`). At each optimizer-step boundary the trainer sums them
over the step's micro-batches and over processes and hands the sums to `AutoKDStop.update`, which decides on the
same step on every process: the KD stage ends at the first step `s >= floor` at which, over the last `window`
steps' KD batches, the student's loss per token is at or below the teacher's (the "catch-up test"), and at the
ceiling at the latest. Judged on the same tokens, the difference of the two losses does not carry the batches'
difficulty, so a short window suffices (benchmarks/regime/REPORT.md, measured its noise).

The outcome and the window's statistics are part of every checkpoint (`TrainerState.stateful_callbacks`), so a
resumed run decides exactly as the uninterrupted one would have, and a run resumed past the decision never loads
the teacher.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .config import SALTConfig, steps_of


class AutoKDStop(TrainerCallback, ExportableState):
    """
    The catch-up test of `kd_steps="auto"` and its outcome. The trainer feeds it (it has no events of its own); it
    is a callback so that the Trainer saves its `state()` in every checkpoint.

    Args:
        window (`int`): optimizer steps the test averages over.
        min_step (`int`), max_step (`int`): the floor and the ceiling of the step at which the KD stage may end.
        fall (`int`, *optional*): the steps over which a linear schedule takes w to 0 once the test fired
            (defaults to `window`).

    Attributes:
        stop_step (`int` or `None`): the optimizer step from which w follows the schedule's end (None: undecided).
        history (`list`): `[student_nll_sum, teacher_nll_sum, tokens]` of the last `window` steps with KD tokens.
        reason (`dict` or `None`): the statistics at `stop_step` (what `SALTTrainer` logs).
        data_switch (`int` or `None`): SALT_DS only: the sample position from which the data come from the whole
            dataset (the batches already drawn when the test fired stay from the selection).
    """

    def __init__(self, window: int = 25, min_step: int = 0, max_step: int = 0, fall: int | None = None):
        self.window, self.min_step, self.max_step = window, min_step, max_step
        self.fall = window if fall is None else fall
        self.stop_step: int | None = None
        self.history: list[list[float]] = []
        self.reason: dict[str, float] | None = None
        self.data_switch: int | None = None

    _ATTRIBUTES = ("stop_step", "history", "reason", "data_switch")

    def set_bounds(self, args: SALTConfig, max_steps: int) -> None:
        """The floor, the ceiling and the fall of a run of `max_steps` optimizer steps, from the config's ratios."""
        self.min_step, self.max_step = (
            steps_of(r, max_steps) for r in (args.kd_auto_min_ratio, args.kd_auto_max_ratio)
        )
        ratio = args.kd_auto_fall_ratio
        self.fall = self.window if ratio is None else steps_of(ratio, max_steps)

    def state(self) -> dict[str, Any]:
        args = {"window": self.window, "min_step": self.min_step, "max_step": self.max_step, "fall": self.fall}
        return {"args": args, "attributes": {k: getattr(self, k) for k in self._ATTRIBUTES}}

    def load(self, stored: dict[str, Any] | None) -> None:
        """Takes the outcome and the window from a checkpoint's `TrainerState.stateful_callbacks` entry."""
        for key, value in ((stored or {}).get("attributes") or {}).items():
            if key in self._ATTRIBUTES:
                setattr(self, key, value)

    def restore(self, stored: dict[str, Any] | None, sampler=None) -> None:
        """`load`, then the SALT_DS `sampler`'s switch where it was; a ceiling of 0 decides at once (no KD stage)."""
        self.load(stored)
        if self.data_switch is not None and sampler is not None:
            sampler.end_kd_stage(self.data_switch)
        if self.max_step == 0:
            self.update(0, [0.0, 0.0, 0.0])

    def end_data_selection(self, sampler, end_step: int, accelerator, args) -> None:
        """SALT_DS: the selection's batches end with the KD stage at `end_step` or, when a data loader has drawn
        beyond it, at the first optimizer step none has drawn from (the same position on every process)."""
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        drawn = int(accelerator.reduce(torch.tensor(sampler.drawn, device=args.device), reduction="max"))
        self.data_switch = sampler.end_kd_stage(max(end_step * batch, -(-drawn // batch) * batch))

    @property
    def decided(self) -> bool:
        return self.stop_step is not None

    def update(self, step: int, sums: list[float]) -> dict[str, float] | None:
        """
        Adds the statistics of the optimizer step that just ended (`step` = `global_step` after it): the
        all-reduced `[student_nll_sum, teacher_nll_sum, tokens]` of its KD micro-batches. Returns `reason` when it
        decides on this step, else None.
        """
        if self.decided:
            return None
        if sums[2] > 0:
            self.history = (self.history + [[float(v) for v in sums]])[-self.window :]
        gap = self._gap()
        caught_up = step >= self.min_step and len(self.history) >= self.window and gap <= 0.0
        if not (caught_up or step >= self.max_step):
            return None
        self.stop_step = step
        self.reason = self._statistics(step, gap, at_ceiling=not caught_up)
        return self.reason

    def _gap(self) -> float:
        tokens = sum(h[2] for h in self.history)
        return (sum(h[0] for h in self.history) - sum(h[1] for h in self.history)) / tokens if tokens else math.inf

    def _statistics(self, step: int, gap: float, at_ceiling: bool) -> dict[str, float]:
        tokens = sum(h[2] for h in self.history)
        per_step = [(h[0] - h[1]) / h[2] for h in self.history]
        return {
            "kd_stop_step": step,
            "kd_stop_student_nll": sum(h[0] for h in self.history) / tokens if tokens else math.nan,
            "kd_stop_teacher_nll": sum(h[1] for h in self.history) / tokens if tokens else math.nan,
            "kd_stop_gap": gap if tokens else math.nan,
            "kd_stop_gap_step_std": statistics.stdev(per_step) if len(per_step) > 1 else math.nan,
            "kd_stop_at_ceiling": float(at_ceiling),
        }
