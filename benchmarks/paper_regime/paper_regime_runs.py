"""The runs of the paper-regime suite (issue 24, paper_regime.py): the student, its teachers and every group of runs
(point 0's ends, the regime, the budget form, the stacked comparison, the scale axis), and where their results live.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402
from bench import RESULTS, RunResult, RunSpec  # noqa: E402

ROOT = RESULTS / "paper_regime"
STUDENT, STEPS = "4x96", 4700
TEACHERS = {"half": "3x80", "quarter": "2x64", "eighth": "2x44"}
EVERY = 100  # evaluation and logging interval (47 held-out evaluations per run)
SAVE_EVERY = 470  # checkpoints at every tenth of the run, for the cooldown branches
W = 0.5


def student(name: str, seed: int = 0, teacher: str | None = "half", steps: int = STEPS, **salt) -> RunSpec:
    extra = {"eval_steps": EVERY, "logging_steps": EVERY // 10, **salt.pop("extra", {})}
    group = salt.pop("group", "baseline" if teacher is None else "auto")
    if teacher is None:
        return RunSpec(name, model=STUDENT, steps=steps, seed=seed, group=group, extra=extra)
    ratio = salt.pop("kd_ratio", None)
    if ratio is None:
        extra.setdefault("kd_steps", "auto")
    return RunSpec(name, STUDENT, steps, seed, teacher, W, ratio, salt.pop("kd_schedule", "step"), group, extra)


def with_checkpoints(spec: RunSpec) -> RunSpec:
    spec.extra |= {"save_strategy": "steps", "save_steps": SAVE_EVERY}
    return spec


def teacher_runs() -> list[RunSpec]:
    extra = {"eval_steps": EVERY, "logging_steps": EVERY}
    return [
        RunSpec(f"teacher_{t}", model=size, steps=STEPS, group="teacher", extra=extra) for t, size in TEACHERS.items()
    ]


def end_runs() -> list[RunSpec]:
    """Point 0: the baseline, KD for the whole run and today's automatic stop (step end), with checkpoints."""
    return [
        with_checkpoints(student("baseline_s0", teacher=None)),
        with_checkpoints(student("kd_all", kd_ratio=1.0, group="kd_all")),
        with_checkpoints(student("auto_step_s0")),
    ]


def end_candidates() -> list[RunSpec]:
    """Point 0's candidate ends of the automatic stop (seed 0, chosen on the dev half): the additive mix (the loss's
    scale does not jump at the end), or w falling linearly after the decision over a fifth or half of the run."""
    fall = {"kd_schedule": "linear_decay"}
    return [
        student("auto_additive_s0", extra={"kd_mix": "additive"}),  # the NLL term at full weight: no jump at the end
        student("fixed_r0.2", kd_ratio=0.2, group="fixed"),  # the step end at 20% (the paper's n_KD), convex mix
        student("auto_fall0.2_s0", **fall, extra={"kd_auto_fall_ratio": 0.2}),
        student("auto_fall0.5_s0", **fall, extra={"kd_auto_fall_ratio": 0.5}),
    ]


# The end of the KD stage the suite runs with, chosen in point 0 (paper_regime/REPORT.md, "The end of the KD stage"):
# the additive mix, whose loss scale does not jump where the KD stage ends (no rise after it, on both halves; today's
# step end rose 0.05 nats).
CHOSEN_END: dict = {"kd_mix": "additive"}
AUTO_S0 = "auto_additive_s0"  # the chosen end's seed-0 run is point 0's candidate run itself
BUDGETS = (0.6, 0.7, 0.8)  # the budget form: the automatic stop on a shortened run, its schedule fit to it
# the project's speed-ups on both arms of the stacked comparison: WSD (last 20% decaying as 1 - sqrt) and rows of 32
# then 64 tokens over the first 20% of the steps (speedups_benchmark.py's settings)
STACKED = {
    "lr_scheduler_type": "warmup_stable_decay",
    "seq_warmup_schedule": "doubling",
    "seq_warmup_start_length": 32,
}
# the scale axis (python): students of ~0.25M and ~1M parameters, each with a teacher about half its size (smaller in
# width and depth), each on ~20 tokens per student parameter
SCALES = {"0.25m": ("4x64", "3x48"), "1m": ("5x128", "4x96")}
TOKENS_PER_PARAM = 20


def auto(name: str, seed: int = 0, teacher: str = "half", steps: int = STEPS, extra: dict | None = None) -> RunSpec:
    """The automatic stop with the chosen end."""
    end = dict(CHOSEN_END)
    schedule = end.pop("kd_schedule", "step")
    return student(name, seed, teacher, steps, kd_schedule=schedule, extra={**end, **(extra or {})})


def stacked(steps: int) -> dict:
    return {
        **STACKED,
        "lr_scheduler_kwargs": {"num_decay_steps": round(0.2 * steps), "decay_type": "1-sqrt"},
        "seq_warmup_steps": round(0.2 * steps),
    }


def regime_runs() -> list[RunSpec]:
    return [
        student("baseline_s1", seed=1, teacher=None),
        auto("auto_s1", seed=1),
        student("baseline_s2", seed=2, teacher=None),
        auto("auto_s2", seed=2),
        student("fixed_add_r0.2", kd_ratio=0.2, group="fixed", extra=dict(CHOSEN_END)),
        student("fixed_add_r0.4", kd_ratio=0.4, group="fixed", extra=dict(CHOSEN_END)),
        auto("auto_quarter", teacher="quarter"),
        auto("auto_eighth", teacher="eighth"),
    ]


def budget_runs(seeds: tuple[int, ...] = (0,), budgets=BUDGETS) -> list[RunSpec]:
    out = []
    for seed in seeds:
        for b in budgets:
            spec = auto(f"auto_budget_{b}_s{seed}", seed=seed, steps=round(STEPS * b))
            spec.group = "budget"
            out.append(spec)
    return out


def budget_baselines() -> list[RunSpec]:
    """The plain run at the largest budget, its schedule fit to it: SALT's gain at an equal budget."""
    b = max(BUDGETS)
    return [student(f"baseline_budget_{b}_s0", teacher=None, steps=round(STEPS * b), group="budget")]


def budget_seed_runs(corpus: str) -> list[RunSpec]:
    """Seeds 1 and 2 at the smallest budget whose seed-0 run reached the baseline's final test loss (0.8 if none);
    known once the seed-0 budgets and baseline ran."""
    base = runs_dir(corpus) / "baseline_s0.json"
    stored = [runs_dir(corpus) / f"auto_budget_{b}_s0.json" for b in BUDGETS]
    if not base.is_file() or not all(p.is_file() for p in stored):
        return []
    target = RunResult.load(base).final_test_loss
    reached = [b for b, p in zip(BUDGETS, stored, strict=True) if RunResult.load(p).final_test_loss <= target]
    return budget_runs((1, 2), (min(reached) if reached else max(BUDGETS),))


def fixed_seed_runs() -> list[RunSpec]:
    """The additive mix with n_KD fixed at 20% (where the head start peaks) on seeds 1 and 2: beside the automatic
    stop's 50% on the same seeds, where the KD stage should end."""
    extra = dict(CHOSEN_END)
    return [student(f"fixed_add_r0.2_s{s}", seed=s, kd_ratio=0.2, group="fixed", extra=extra) for s in (1, 2)]


def ceiling_runs() -> list[RunSpec]:
    """KD for the whole run with the 1/4 and 1/8 teachers, with checkpoints: their cooldown branches give the head
    start's ceiling per teacher ratio."""
    return [
        with_checkpoints(student(f"kd_all_{t}", teacher=t, kd_ratio=1.0, group="kd_all"))
        for t in ("quarter", "eighth")
    ]


STACKED_BUDGETS = (0.7, 0.8, 1.0)  # the stacked comparison's budgets (1.0: the full-length run)


def stacked_name(budget: float) -> str:
    return "auto_stacked" if budget == 1.0 else f"auto_stacked_budget_{budget}"


def stacked_runs() -> list[RunSpec]:
    base = student("baseline_stacked", teacher=None, extra=stacked(STEPS))
    runs = [base]
    for b in STACKED_BUDGETS:
        steps = round(STEPS * b)
        spec = auto(stacked_name(b), steps=steps, extra=stacked(steps))
        spec.group = "stacked"
        runs.append(spec)
    return runs


@cache
def scale_steps(model: str) -> int:
    return round(TOKENS_PER_PARAM * bench.build_model(model, 300, 128, 0).num_parameters() / (bench.BATCH * 128))


def scale_every(steps: int) -> dict:
    """The scale axis's evaluation and logging grid: 47 evaluations and 470 logs over a run of `steps`."""
    return {"eval_steps": max(1, steps // 47), "logging_steps": max(1, steps // 470)}


def scale_name(kind: str, scale: str, budget: float = 1.0, seed: int = 0) -> str:
    """baseline_scale_<n> or auto_scale_<n>, with _budget_<b> for a shortened run and _s<k> for seed k > 0."""
    return f"{kind}_scale_{scale}" + (f"_budget_{budget}" if budget != 1.0 else "") + (f"_s{seed}" if seed else "")


def scale_baseline(scale: str, seed: int = 0) -> RunSpec:
    model = SCALES[scale][0]
    steps = scale_steps(model)
    name = scale_name("baseline", scale, seed=seed)
    return RunSpec(name, model=model, steps=steps, seed=seed, group="scale", extra=scale_every(steps))


def scale_auto(scale: str, budget: float = 1.0, seed: int = 0) -> RunSpec:
    """The automatic stop (chosen end) at one scale on `budget` of the steps, its schedule fit to them, evaluated on
    the full run's grid."""
    model = SCALES[scale][0]
    steps = scale_steps(model)
    end = dict(CHOSEN_END)
    schedule = end.pop("kd_schedule", "step")
    extra = {**scale_every(steps), "kd_steps": "auto", **end}
    name = scale_name("auto", scale, budget, seed)
    return RunSpec(name, model, round(steps * budget), seed, f"scale_{scale}", W, None, schedule, "scale", extra)


def scale_runs() -> list[RunSpec]:
    """Per scale: the 1/2 teacher, the baseline, the automatic stop, and the automatic stop on the largest budget
    (its schedule fit to 0.8 of the steps, evaluated on the full run's grid): the budget form against size."""
    runs = []
    for name, (model, teacher) in SCALES.items():
        steps = scale_steps(model)
        every = scale_every(steps)
        runs.append(RunSpec(f"teacher_scale_{name}", model=teacher, steps=steps, group="teacher", extra=every))
        runs += [scale_baseline(name), scale_auto(name), scale_auto(name, max(BUDGETS))]
    return runs


SCALE_SEEDS = (1,)  # more seeds of the largest student, the one whose budget form reached its baseline


def scale_more_runs(corpus: str) -> list[RunSpec]:
    """The largest student further: a second seed of its baseline and automatic stop, and the next smaller budget
    once its largest budget's run reached the baseline's final test loss (known once both ran)."""
    name = list(SCALES)[-1]
    runs = [scale_baseline(name, s) for s in SCALE_SEEDS] + [scale_auto(name, seed=s) for s in SCALE_SEEDS]
    top = max(BUDGETS)
    base, short = (
        runs_dir(corpus) / f"{n}.json" for n in (scale_name("baseline", name), scale_name("auto", name, top))
    )
    if base.is_file() and short.is_file():
        if RunResult.load(short).final_test_loss <= RunResult.load(base).final_test_loss:
            runs.append(scale_auto(name, max(b for b in BUDGETS if b < top)))
    return runs


def all_runs(corpus: str = "python") -> dict[str, list[RunSpec]]:
    groups = {
        "teachers": teacher_runs(),
        "end": end_runs(),
        "end_candidates": end_candidates(),
        "regime": regime_runs(),
        "budget": budget_runs() + budget_baselines(),
        "budget_seeds": budget_seed_runs(corpus),
        "stacked": stacked_runs(),
        "ceilings": ceiling_runs(),
        "fixed_seeds": fixed_seed_runs(),
    }
    if corpus == "python":
        groups["scale"] = scale_runs()
        groups["scale_more"] = scale_more_runs(corpus)
    return groups


def corpus_dir(corpus: str):
    """A corpus's folder of results (runs/, cooldowns.json, probes.json, end.json, curves.png)."""
    return ROOT / corpus


def runs_dir(corpus: str):
    return corpus_dir(corpus) / "runs"


CEILING_RUNS = {"half": "kd_all", "quarter": "kd_all_quarter", "eighth": "kd_all_eighth"}  # KD all run, per teacher
OTHER = {"python": "prose", "prose": "python"}
STEP_COST = ROOT / "step_cost.json"  # written by --step-cost


def cost_pairs() -> dict[str, tuple[str, str]]:
    """The (student, teacher) pairs whose step costs the summary needs: the main student with each teacher, and the
    scale axis's pairs."""
    pairs = {t: (STUDENT, size) for t, size in TEACHERS.items()}
    return pairs | {f"scale_{n}": pair for n, pair in SCALES.items()}
