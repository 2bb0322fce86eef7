"""salt_hf.schedules: the KD weight of each schedule against its closed form, and the invariants of all three."""

from __future__ import annotations

import pytest

from salt_hf.schedules import KD_SCHEDULES, kd_weight, loss_weights

SCHEDULES = ["step", "linear_decay", "linear_ratio_decay"]
WEIGHTS = [0.1, 0.5, 0.9, 1.0]
KD_STEPS = [1, 7, 100]


def closed_form(schedule: str, step: int, w: float, n_kd: int) -> float:
    """The KD stage's weight, written from the definitions; valid for 0 <= step < n_kd only."""
    assert 0 <= step < n_kd
    if schedule == "step":
        return w
    if schedule == "linear_decay":
        return w * (1 - step / n_kd)
    if schedule == "linear_ratio_decay":
        r = w / (1 - w)
        r_t = r * (1 - step / n_kd)
        return r_t / (1 + r_t)
    raise AssertionError(schedule)


def cases():
    for schedule in SCHEDULES:
        for w in WEIGHTS:
            if schedule == "linear_ratio_decay" and w == 1.0:
                continue
            for n_kd in KD_STEPS:
                yield pytest.param(schedule, w, n_kd, id=f"{schedule}-w{w}-n{n_kd}")


def test_the_three_schedules_are_registered():
    assert sorted(KD_SCHEDULES) == sorted(SCHEDULES)


@pytest.mark.parametrize(("schedule", "w", "n_kd"), cases())
def test_matches_closed_form(schedule, w, n_kd):
    steps = sorted({0, n_kd // 2, max(n_kd - 1, 0)})
    for step in steps:
        got = kd_weight(step, schedule=schedule, weight=w, kd_steps=n_kd)
        assert isinstance(got, float)
        assert got == pytest.approx(closed_form(schedule, step, w, n_kd), rel=1e-12, abs=1e-15), step
    # every schedule starts at w
    assert kd_weight(0, schedule=schedule, weight=w, kd_steps=n_kd) == pytest.approx(w, rel=1e-12)
    # and is exactly 0 from n_KD on
    for step in (n_kd, n_kd + 1, n_kd + 5, 10 * n_kd, 10**9):
        assert kd_weight(step, schedule=schedule, weight=w, kd_steps=n_kd) == 0.0, step


# w = 0.5, n_KD = 10, by hand: linear_ratio_decay has r = 1, so w_t = (1 - t/10) / (2 - t/10)
PINNED = [
    ("step", 0, 0.5),
    ("step", 9, 0.5),
    ("step", 10, 0.0),
    ("step", 15, 0.0),
    ("linear_decay", 0, 0.5),
    ("linear_decay", 5, 0.25),
    ("linear_decay", 9, 0.05),
    ("linear_decay", 10, 0.0),
    ("linear_decay", 15, 0.0),
    ("linear_ratio_decay", 0, 0.5),
    ("linear_ratio_decay", 5, 1 / 3),
    ("linear_ratio_decay", 9, 1 / 11),
    ("linear_ratio_decay", 10, 0.0),
    ("linear_ratio_decay", 15, 0.0),
]


@pytest.mark.parametrize(("schedule", "step", "expected"), PINNED)
def test_pinned_values(schedule, step, expected):
    assert kd_weight(step, schedule=schedule, weight=0.5, kd_steps=10) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize(("schedule", "w", "n_kd"), cases())
def test_inside_0_w_non_increasing_and_zero_exactly_from_n_kd(schedule, w, n_kd):
    values = [kd_weight(step, schedule=schedule, weight=w, kd_steps=n_kd) for step in range(3 * n_kd + 3)]
    assert all(0.0 <= v <= w for v in values)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    # KD is active (w_t > 0) exactly before n_KD
    assert all(v > 0.0 for v in values[:n_kd])
    assert all(v == 0.0 for v in values[n_kd:])


def test_ratio_decay_lies_between_step_and_linear():
    """The ratio decay keeps more KD weight than the linear decay and less than the step, at every step."""
    w, n_kd = 0.5, 20
    for step in range(1, n_kd):
        lin = kd_weight(step, schedule="linear_decay", weight=w, kd_steps=n_kd)
        ratio = kd_weight(step, schedule="linear_ratio_decay", weight=w, kd_steps=n_kd)
        flat = kd_weight(step, schedule="step", weight=w, kd_steps=n_kd)
        assert lin < ratio < flat


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n_kd", [0, 1, 10])
def test_zero_weight_gives_zero(schedule, n_kd):
    for step in range(0, 2 * n_kd + 2):
        assert kd_weight(step, schedule=schedule, weight=0.0, kd_steps=n_kd) == 0.0


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("w", [0.3, 0.9])
def test_no_kd_stage(schedule, w):
    for step in (0, 1, 100):
        assert kd_weight(step, schedule=schedule, weight=w, kd_steps=0) == 0.0


def test_step_weight_one_is_allowed():
    assert kd_weight(0, schedule="step", weight=1.0, kd_steps=3) == 1.0
    assert kd_weight(1, schedule="linear_decay", weight=1.0, kd_steps=4) == 0.75


def test_ratio_decay_refuses_weight_one():
    with pytest.raises(ValueError, match="linear_ratio_decay"):
        kd_weight(0, schedule="linear_ratio_decay", weight=1.0, kd_steps=10)


@pytest.mark.parametrize("name", ["cosine", "Step", "", "linear"])
def test_unknown_schedule_is_named(name):
    with pytest.raises(ValueError, match=f"schedule={name!r}"):
        kd_weight(0, schedule=name, weight=0.5, kd_steps=10)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_bad_numbers_raise(schedule):
    with pytest.raises(ValueError, match="step=-1"):
        kd_weight(-1, schedule=schedule, weight=0.5, kd_steps=10)
    with pytest.raises(ValueError, match="kd_steps=-1"):
        kd_weight(0, schedule=schedule, weight=0.5, kd_steps=-1)
    for w in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"weight={w}"):
            kd_weight(0, schedule=schedule, weight=w, kd_steps=10)


def test_pure_function_of_the_step():
    """Same arguments, same answer, in any order: nothing is kept between calls (resume-safe)."""
    args = dict(schedule="linear_ratio_decay", weight=0.7, kd_steps=50)
    forward = [kd_weight(s, **args) for s in range(60)]
    backward = [kd_weight(s, **args) for s in reversed(range(60))][::-1]
    assert forward == backward


# ---- how the two terms combine (kd_mix) -----------------------------------------------------------------------------


@pytest.mark.parametrize("w", [0.0, 0.2, 0.5, 0.9])
def test_additive_mix_is_the_convex_mix_scaled_by_one_over_one_minus_w(w):
    convex, additive = loss_weights(w, "convex"), loss_weights(w, "additive")
    assert convex == (1.0 - w, w)
    assert additive[0] == 1.0
    assert additive[0] * (1.0 - w) == pytest.approx(convex[0]) and additive[1] * (1.0 - w) == pytest.approx(convex[1])


def test_mix_pinned_values_and_errors():
    assert loss_weights(0.5, "additive") == (1.0, 1.0)
    assert loss_weights(0.25, "additive") == pytest.approx((1.0, 1.0 / 3.0))
    with pytest.raises(ValueError, match="infinite KD weight"):
        loss_weights(1.0, "additive")
    with pytest.raises(ValueError, match="'sum' is not one of"):
        loss_weights(0.5, "sum")
