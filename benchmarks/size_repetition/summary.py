"""The study's summary (issue 31, point 4): results/summary.json with one row per cell, read from the stored runs
alone (no corpus, no checkpoint), and the figure. Wall-clock weighs steps at the costs `--step-cost` measured
(paper_regime_summary's `against_baseline` and `budget_form`); None before it ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# bench.py lives one folder up (benchmarks/ is not a package); importing it puts paper_regime/ on the path too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench  # noqa: E402
import code_corpus  # noqa: E402
import table  # noqa: E402
from bench import RunResult  # noqa: E402
from figure import plot  # noqa: E402
from paper_regime_summary import against_baseline, budget_form  # noqa: E402
from runs import (  # noqa: E402
    BUDGETS,
    GOAL,
    REPEATS,
    ROOT,
    RUNS,
    SIZES,
    STEP_COST,
    TOKENS_PER_PARAM,
    decays,
    own_seed_noise,
    run_name,
    tag,
    teacher_name,
)

SEEDS = (0, 1, 2)
FIGURE = ROOT / "gain_by_size.png"


def cell_row(
    runs: dict[str, RunResult], size: str, repeats: float, costs: dict, train_rows: int | None, folder: Path
) -> dict:
    """One cell: its teacher, its baselines and SALT runs by weight decay (the dev half chooses each), the automatic
    stop over the seeds that ran with its baseline, the budget form; what is not stored yet is missing or None."""
    teacher = runs.get(f"teacher_{teacher_name(size, repeats)}")
    by_wd = {
        wd: runs[n] for wd in decays(size, repeats, folder) if (n := run_name("baseline", size, repeats, wd)) in runs
    }
    row: dict = {
        "cell": f"{size}_{tag(repeats)}",
        "size": size,
        "student": SIZES[size][0],
        "teacher": SIZES[size][1],
        "repeats": repeats,
        "tokens_per_param": TOKENS_PER_PARAM[size],
        "teacher_final_loss": teacher.final_test_loss if teacher else None,
        "baseline_by_weight_decay": {f"{wd:g}": arm_losses(r) for wd, r in by_wd.items()},
    }
    if not by_wd:
        return row
    wd = min(by_wd, key=lambda d: by_wd[d].final_dev_loss)  # the dev half chooses, the test half reports
    base0 = by_wd[wd]
    salt_by_wd = {d: runs[n] for d in {bench.WEIGHT_DECAY, wd} if (n := run_name("auto", size, repeats, d)) in runs}
    salt_wd = min(sorted(salt_by_wd), key=lambda d: salt_by_wd[d].final_dev_loss, default=bench.WEIGHT_DECAY)
    row |= {
        "student_params": base0.params,
        "teacher_params": teacher.params if teacher else None,
        "steps": base0.spec.steps,
        "epochs": epochs(base0.spec.steps, repeats, train_rows),
        "weight_decay": wd,
        "weight_decays_run": sorted(by_wd),
        # what tuning the weight decay bought the plain run (0 where only the recipe's ran)
        "tuned_weight_decay_gain": by_wd[bench.WEIGHT_DECAY].final_test_loss - base0.final_test_loss
        if bench.WEIGHT_DECAY in by_wd
        else None,
        "baseline_passes_teacher_at": passes_at(base0, teacher),
        "salt_by_weight_decay": {f"{d:g}": arm_losses(r) for d, r in sorted(salt_by_wd.items())},
        "salt_weight_decay": salt_wd,
    }
    return row | seeds_block(runs, size, repeats, wd, salt_wd, by_wd, salt_by_wd, costs.get(size))


def arm_losses(run: RunResult, last: int = 20) -> dict:
    """A run's final test and dev loss, the mean training loss of its last `last` logged steps (None without a log)
    and the step of its lowest test loss on the evaluation grid (the last one where no curve rose late)."""
    train = [e["loss"] for e in run.train_log if "loss" in e][-last:]
    return {
        "test": run.final_test_loss,
        "dev": run.final_dev_loss,
        "train_end": sum(train) / len(train) if train else None,
        "lowest_test_step": min(run.curve_step_test_dev, key=lambda p: p[1])[0],
    }


def seeds_block(
    runs: dict[str, RunResult],
    size: str,
    repeats: float,
    wd: float,
    salt_wd: float,
    by_wd: dict,
    salt_by_wd: dict,
    cost,
) -> dict:
    """The comparison at each arm's chosen weight decay over the seeds where both ran, the gains at the recipe's
    weight decay (seed 0) and the budget form; only the chosen baseline's loss before SALT ran."""
    base0 = by_wd[wd]
    pairs = seed_pairs(runs, size, repeats, wd, salt_wd)
    if not pairs:
        return {"baseline_final_loss": bench.seed_stats([base0.final_test_loss])}
    against = [against_baseline(a, b, cost) for a, b in pairs.values()]
    auto0, recipe_base = pairs.get(0, (None, None))[0], by_wd.get(bench.WEIGHT_DECAY)
    recipe_salt = salt_by_wd.get(bench.WEIGHT_DECAY)
    row = {
        "seeds": sorted(pairs),
        "baseline_final_loss": bench.seed_stats([b.final_test_loss for _, b in pairs.values()]),
        "auto_final_loss": bench.seed_stats([a.final_test_loss for a, _ in pairs.values()]),
        "gain": bench.seed_stats([b.final_test_loss - a.final_test_loss for a, b in pairs.values()]),
        # both at the recipe's weight decay 0.01 (seed 0): the gain a user who tunes neither sees
        "gain_over_recipe_baseline": recipe_base.final_test_loss - recipe_salt.final_test_loss
        if recipe_salt and recipe_base
        else None,
        # SALT at the recipe's weight decay against the tuned baseline (seed 0): what SALT adds where only the plain
        # run is tuned
        "gain_untuned_salt": base0.final_test_loss - recipe_salt.final_test_loss if recipe_salt else None,
        "steps_to_target_ratio": bench.seed_stats([r["steps_to_target_ratio"] for r in against], reached=True),
        "wallclock_to_target_ratio": bench.seed_stats([r["wallclock_to_target_ratio"] for r in against], reached=True),
        "kd_steps": [a.kd_steps for a, _ in pairs.values()],
        "kd_stage_end": [a.kd_steps / a.spec.steps for a, _ in pairs.values()],
    }
    if auto0 is not None:
        row |= budget_block(runs, size, repeats, salt_wd, pairs, cost)
    return row


def seed_pairs(runs: dict[str, RunResult], size: str, repeats: float, wd: float, salt_wd: float) -> dict[int, tuple]:
    """{seed: (automatic stop, baseline), each at its chosen weight decay} for the seeds where both are stored."""
    out = {}
    for seed in SEEDS:
        a = run_name("auto", size, repeats, salt_wd, seed=seed)
        b = run_name("baseline", size, repeats, wd, seed=seed)
        if a in runs and b in runs:
            out[seed] = (runs[a], runs[b])
    return out


def budget_block(runs: dict[str, RunResult], size: str, repeats: float, wd: float, pairs: dict, cost) -> dict:
    """The budget form (SALT's chosen weight decay `wd`) per seed of `pairs` that has one: its shortened runs and the
    full-length one as the budget 1.0, against that seed's chosen baseline, in steps and wall-clock; seed 0's at the
    top, and whether the issue's goal holds on two seeds or more (None before the second)."""
    per_seed = {}
    for seed, (full, base) in pairs.items():
        short = {b: runs[n] for b in BUDGETS if (n := run_name("auto", size, repeats, wd, b, seed)) in runs}
        if short:
            stored = {r.spec.steps / base.spec.steps: r for r in short.values()} | {1.0: full}
            per_seed[seed] = {
                "budget_finals": {f"{b:g}": r.final_test_loss for b, r in short.items()},
                **budget_form(stored, base.final_test_loss, cost, base.spec.steps),
            }
    if 0 not in per_seed:
        return {}
    by_seed = {str(k): v for k, v in per_seed.items()}
    return {**per_seed[0], "budget_by_seed": by_seed, "goal_met": goal_met(list(per_seed.values()))}


def goal_met(per_seed: list[dict]) -> bool | None:
    """The issue's goal: the budget form at the baseline's final test loss on at most GOAL's fractions of its steps
    and wall-clock, on every seed, two at least; False once a seed misses it, None while one seed has run."""
    hit = [
        b["budget_to_target"] is not None
        and b["budget_to_target"] <= GOAL["steps"]
        and b["budget_wallclock_to_target"] is not None
        and b["budget_wallclock_to_target"] <= GOAL["wallclock"]
        for b in per_seed
    ]
    return False if not all(hit) else None if len(hit) < 2 else True


def epochs(student_steps: int, repeats: float, train_rows: int | None) -> float | None:
    """Passes over the cell's data (runs.epochs, without the corpus: the train split's rows from corpus.json)."""
    if repeats == 1:
        return None if train_rows is None else student_steps * bench.BATCH / train_rows
    return student_steps * bench.BATCH / round(student_steps * bench.BATCH / repeats)


def passes_at(base: RunResult, teacher: RunResult | None) -> float | None:
    """Where the baseline passes its teacher's final test loss, as a fraction of its run."""
    if teacher is None:
        return None
    step = bench.first_step_at_or_below(base.curve_step_test_dev, teacher.final_test_loss)
    return None if step is None else step / base.spec.steps


def summarise(runs_folder: Path = RUNS, step_cost: Path = STEP_COST) -> dict:
    runs = bench.load_runs(runs_folder) if runs_folder.is_dir() else {}
    costs = bench.load_step_costs(step_cost)
    recipe = code_corpus.load_recipe()
    train_rows = recipe.get("built", {}).get("train_rows")
    cells = [cell_row(runs, size, r, costs, train_rows, runs_folder) for size in SIZES for r in REPEATS[size]]
    cells = [c for c in cells if c["baseline_by_weight_decay"]]
    return {
        "corpus_sha256": recipe.get("content_sha256"),
        "step_costs_measured": sorted(costs),
        "seed_noise": own_seed_noise(runs_folder),
        "cells": cells,
        "runs": sorted(runs),
    }


def write_outputs(out: Path = ROOT, readme: Path | None = None) -> list[Path]:
    """summary.json and the figure from the runs stored under `out`, and the result table in `readme` where given;
    their paths (the figure once a cell has a gain, the README where it has the table's block)."""
    summary = summarise(out / RUNS.name, out / STEP_COST.name)
    bench.write_json(out / "summary.json", summary, indent=1)
    paths = [out / "summary.json"]
    if any("gain" in c for c in summary["cells"]):
        plot(summary, out / FIGURE.name)
        paths.append(out / FIGURE.name)
    if readme is not None and table.written(readme.read_text()) is not None:
        table.update(json.loads(paths[0].read_text()), readme)  # as a reader of the JSON sees it
        paths.append(readme)
    return paths
