"""KD weight schedules of SALT as pure functions of the optimizer step.

SALT (Rawat et al., 2024, https://arxiv.org/abs/2410.18779) mixes the next-token loss with knowledge distillation
from a small model for the first `kd_steps` optimizer steps: `loss = (1 - w_t) * NLL + w_t * KD`. The weight `w_t`
reaches 0 at `kd_steps` by one of three transitions. Every function here depends on the step alone, so the
schedule is identical on every process and survives `resume_from_checkpoint` without any saved state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args


def _step(step: int, weight: float, kd_steps: int) -> float:
    # 1) constant weight during the KD stage, then plain training (the paper's main recipe)
    return weight if step < kd_steps else 0.0


def _linear_decay(step: int, weight: float, kd_steps: int) -> float:
    if step >= kd_steps:
        return 0.0
    # 1) weight falls linearly from `weight` at step 0 towards 0 at `kd_steps`
    frac = step / kd_steps
    assert 0.0 <= frac < 1.0
    return weight * (1.0 - frac)


def _linear_ratio_decay(step: int, weight: float, kd_steps: int) -> float:
    if step >= kd_steps or weight == 0.0:
        return 0.0
    # 1) the KD-to-NLL ratio r = w / (1 - w) falls linearly to 0 at `kd_steps`
    frac = step / kd_steps
    assert 0.0 <= frac < 1.0
    ratio = weight / (1.0 - weight) * (1.0 - frac)
    # 2) back from the ratio to a weight in [0, 1)
    return ratio / (1.0 + ratio)


KDSchedule = Literal["step", "linear_decay", "linear_ratio_decay"]
KD_SCHEDULES: dict[str, Callable[[int, float, int], float]] = dict(
    zip(get_args(KDSchedule), (_step, _linear_decay, _linear_ratio_decay), strict=True)
)


def kd_weight(step: int, *, schedule: str, weight: float, kd_steps: int) -> float:
    """
    The KD weight `w_t` of SALT at an optimizer step.

    Args:
        step (`int`):
            Number of optimizer steps already taken (`TrainerState.global_step`); the first step is 0.
        schedule (`str`):
            One of `"step"` (w for step < kd_steps), `"linear_decay"` (w * (1 - step / kd_steps)) or
            `"linear_ratio_decay"` (the ratio w / (1 - w) decays linearly; w = 1 is refused).
        weight (`float`):
            The initial KD weight w, in [0, 1].
        kd_steps (`int`):
            n_KD, the number of steps of the KD stage. Every schedule gives 0 from this step on.

    Returns:
        `float`: the weight in [0, weight].
    """
    if schedule not in KD_SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {sorted(KD_SCHEDULES)}.")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight={weight} must be in [0, 1].")
    if schedule == "linear_ratio_decay" and weight == 1.0:
        raise ValueError("weight=1.0 gives an infinite KD/NLL ratio for schedule='linear_ratio_decay'; use w < 1.")
    if kd_steps < 0:
        raise ValueError(f"kd_steps={kd_steps} must be >= 0.")
    if step < 0:
        raise ValueError(f"step={step} must be >= 0.")
    return KD_SCHEDULES[schedule](step, weight, kd_steps)


def auto_kd_weight(step: int, *, schedule: str, weight: float, stop_step: int | None, ramp: int) -> float:
    """
    `w_t` under `kd_steps="auto"`: `weight` until the KD stage's end is decided at `stop_step` (and while it is
    undecided, None); from there `"step"` gives 0 and the linear schedules fall to 0 over the next `ramp` steps
    (`kd_weight` of the schedule, counted from `stop_step`, with `kd_steps=ramp`).
    """
    if stop_step is None or step < stop_step:
        return weight
    return kd_weight(step - stop_step, schedule=schedule, weight=weight, kd_steps=0 if schedule == "step" else ramp)


def auto_kd_end(schedule: str, stop_step: int, ramp: int) -> int:
    """The first step with w = 0 under `kd_steps="auto"`, once the end was decided at `stop_step`."""
    return stop_step if schedule == "step" else stop_step + ramp


KDMix = Literal["convex", "additive"]


def loss_weights(w: float, mix: str = "convex") -> tuple[float, float]:
    """
    The weights `(nll_weight, kd_weight)` of the two terms at KD weight `w`.

    `"convex"` is the paper's `(1 - w) * NLL + w * KD`. `"additive"` is `NLL + w / (1 - w) * KD`: the same balance of
    the two terms (so, for Adam, the same updates while w is constant), with the NLL term at full weight throughout.
    Under "convex" the NLL term's weight jumps from `1 - w` to 1 where the KD stage ends, the gradient's scale with
    it, and Adam's second moment (a memory of about 1 / (1 - beta2) steps) lags behind: a burst of larger updates and
    a rise of the loss (benchmarks/paper_regime/REPORT.md). Under "additive" the end only removes the KD term.
    """
    if mix == "convex":
        return 1.0 - w, w
    if mix == "additive":
        if w >= 1.0:
            raise ValueError(f"w={w} gives an infinite KD weight under mix='additive'; use w < 1.")
        return 1.0, w / (1.0 - w)
    raise ValueError(f"mix={mix!r} is not one of {list(get_args(KDMix))}.")
