"""The paper-regime suite's summary (issue 24, points 0 and 5): summary.json and each corpus's curves.png from the
stored runs, the cooldown branches' head start and point 0's report on the KD stage's end. Wall-clock weighs steps at
the costs `paper_regime.py --step-cost` measured.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402
from bench import RunResult  # noqa: E402
from paper_regime_plots import plot  # noqa: E402
from paper_regime_runs import (  # noqa: E402
    AUTO_S0,
    BUDGETS,
    CEILING_RUNS,
    OTHER,
    ROOT,
    SCALE_SEEDS,
    SCALES,
    STACKED_BUDGETS,
    STEP_COST,
    STEPS,
    STUDENT,
    corpus_dir,
    runs_dir,
    scale_name,
    stacked_name,
)
from regime_benchmark import wallclock_at_measured_cost  # noqa: E402


def write_outputs() -> list:
    """summary.json and each corpus's curves.png from the stored runs; their paths."""
    corpora = [c for c in OTHER if runs_dir(c).is_dir()]
    write_summary(corpora)
    return [ROOT / "summary.json", *[p for p in map(plot_corpus, corpora) if p]]


def wallclock(run: RunResult, reach: int | None, cost: dict | None, baseline_steps: int = STEPS) -> float | None:
    """`reach` steps of `run` at the measured costs (KD steps with the teacher's forward, later steps on SALT's plain
    path) over the baseline's steps at the plain Trainer step's cost; None before --step-cost ran."""
    return wallclock_at_measured_cost(run, reach, baseline_steps, cost)


def budget_wallclock(runs: dict[str, RunResult], seed: int, target: float, cost: dict | None) -> float | None:
    """The budget form in wall-clock: each budget run's whole cost as a fraction of the baseline's, interpolated to
    the target like `budget_to_target`."""
    finals = {}
    for run in budget_runs_of(runs, seed).values():
        wall = wallclock(run, run.spec.steps, cost)
        if wall is not None:
            finals[wall] = run.final_test_loss
    return budget_to_target(finals, target) if finals else None


# ---- summary over the stored runs (point 5) -------------------------------------------------------------------------


def budget_to_target(finals: dict[float, float], target: float) -> float | None:
    """The smallest budget fraction whose final test loss is at or below `target`, interpolated linearly between the
    budgets run (the automatic stop's full-length run is the budget 1.0); None when none reaches it."""
    points = sorted(finals.items())
    if points and points[0][1] <= target:
        return points[0][0]  # the smallest budget run already reaches it: an upper bound
    for (b0, l0), (b1, l1) in zip(points, points[1:], strict=False):
        if l1 <= target < l0:
            return b0 + (b1 - b0) * (l0 - target) / (l0 - l1)
    return None


def summarise(corpus: str) -> dict:
    runs = bench.load_runs(runs_dir(corpus))
    teachers = {
        n.removeprefix("teacher_"): r for n, r in runs.items() if n.startswith("teacher_") and "scale" not in n
    }
    bases = seed_baselines(runs)
    base = bases.get(0)
    out: dict = {"corpus": corpus, "steps": STEPS, "student": STUDENT, "runs": sorted(runs)}
    if base is None:
        return out
    out["baseline_final_loss"] = bench.seed_stats([bases[s].final_test_loss for s in sorted(bases)])
    out["seed_noise"] = seed_noise(list(bases.values()))
    out["teacher_final_loss"] = {
        t: {"params": r.params, "final_test_loss": r.final_test_loss} for t, r in teachers.items()
    }
    kd_all = runs.get("kd_all")
    out["kd_all_final_loss"] = kd_all.final_test_loss if kd_all else None
    out["regime"] = regime(teachers, base, kd_all)
    costs = bench.load_step_costs(STEP_COST)
    out["step_costs_measured"] = sorted(costs)
    out["auto"] = auto_block(runs, bases, costs)
    out["fixed"] = {n: against_baseline(runs[n], base, costs.get("half")) for n in FIXED if n in runs}
    out["fixed_0.2_seeds"] = fixed_seeds_block(runs, bases)
    out["teacher_axis"] = teacher_axis(runs, teachers, base, costs)
    out["stacked"] = stacked_block(runs, base, costs.get("half"))
    out["scale_axis"] = scale_axis(runs, base, runs.get(AUTO_S0), costs)
    by_teacher = {t: head_start(corpus, kd_run=r)["head_start_ceiling"] for t, r in CEILING_RUNS.items()}
    out["head_start_ceiling"], out["head_start_ceiling_by_teacher"] = by_teacher["half"], by_teacher
    path = corpus_dir(corpus) / "probes.json"
    probes_ = json.loads(path.read_text()) if path.is_file() else {}
    out["icl"] = [{"run": n, **{k: v for k, v in p.items()}} for n, p in sorted(probes_.items())]
    return out


def seed_baselines(runs: dict[str, RunResult]) -> dict[int, RunResult]:
    """The main student's baselines by seed (baseline_s0, _s1, ...), not the scale axis's or the stacked one."""
    return {r.spec.seed: r for n, r in runs.items() if re.fullmatch(r"baseline_s\d+", n)}


def regime(teachers: dict[str, RunResult], base: RunResult, kd_all: RunResult | None) -> dict:
    """Per teacher: where the baseline passes its final test loss (fraction of the run); for the half teacher,
    whether KD for the whole run ends above the baseline."""
    return {
        t: {
            "baseline_passes_teacher_at": _frac(
                bench.first_step_at_or_below(base.curve_step_test_dev, r.final_test_loss)
            ),
            "kd_all_ends_above_baseline": kd_all.final_test_loss > base.final_test_loss
            if kd_all and t == "half"
            else None,
        }
        for t, r in teachers.items()
    }


def auto_block(runs: dict[str, RunResult], bases: dict[int, RunResult], costs: dict) -> dict:
    """The automatic stop over its seeds: final loss, the curve form (steps and wall-clock to the seed's baseline's
    final test loss), the rise after the KD stage's end, and the budget form."""
    autos = {s: runs.get(AUTO_S0 if s == 0 else f"auto_s{s}") for s in (0, 1, 2)}
    seeds = [s for s, r in autos.items() if r is not None and s in bases]
    reach = [bench.first_step_at_or_below(autos[s].curve_step_test_dev, bases[s].final_test_loss) for s in seeds]
    budgeted = [s for s in seeds if budget_finals(runs, s)]  # the seeds whose budget runs ran
    cost = costs.get("half")
    return {
        "runs": [AUTO_S0 if s == 0 else f"auto_s{s}" for s in seeds],
        "final_loss": bench.seed_stats([autos[s].final_test_loss for s in seeds]),
        "steps_to_target_ratio": bench.seed_stats([_frac(r) for r in reach], reached=True),
        "wallclock_to_target_ratio": bench.seed_stats(
            [wallclock(autos[s], r, cost) for s, r in zip(seeds, reach, strict=True)], reached=True
        ),
        "budget_seeds": budgeted,
        "budget_wallclock_to_target": bench.seed_stats(
            [budget_wallclock(runs, s, bases[s].final_test_loss, cost) for s in budgeted], reached=True
        ),
        "rise_after_end": bench.seed_stats([rise_after_end(autos[s]) for s in seeds]),
        "budget_finals": {s: budget_finals(runs, s) for s in budgeted},
        "baseline_budget_finals": {
            b: runs[f"baseline_budget_{b}_s0"].final_test_loss for b in BUDGETS if f"baseline_budget_{b}_s0" in runs
        },
        "budget_to_target": bench.seed_stats(
            [budget_to_target(budget_finals(runs, s), bases[s].final_test_loss) for s in budgeted], reached=True
        ),
    }


def teacher_axis(runs: dict[str, RunResult], teachers: dict[str, RunResult], base: RunResult, costs: dict) -> list:
    """The automatic stop with each teacher (seed 0): gain, steps- and wall-clock-to-target at that teacher's cost."""
    return [
        {
            "teacher": t,
            "ratio": teachers[t].params / base.params,
            "teacher_final_loss": teachers[t].final_test_loss,
            "gain_over_baseline": base.final_test_loss - runs[n].final_test_loss,
            **against_baseline(runs[n], base, costs.get(t)),
        }
        for t, n in (("half", AUTO_S0), ("quarter", "auto_quarter"), ("eighth", "auto_eighth"))
        if n in runs and t in teachers
    ]


def scale_axis(runs: dict[str, RunResult], base: RunResult, auto0: RunResult | None, costs: dict) -> list[dict]:
    """Per student size (the main student is the 0.5M row): the baseline's and the automatic stop's final test loss,
    the gain, steps- and wall-clock-to-target, where the baseline passes its 1/2 teacher, the budget form, and the
    gain over the seeds run (seed 0 and SCALE_SEEDS)."""
    shortened = {b: runs.get(f"auto_budget_{b}_s0") for b in BUDGETS}
    sizes = {"0.5m": (base, auto0, runs.get("teacher_half"), "half", shortened)}
    for n in SCALES:
        sizes[n] = (
            runs.get(scale_name("baseline", n)),
            runs.get(scale_name("auto", n)),
            runs.get(f"teacher_scale_{n}"),
        )
        sizes[n] += (f"scale_{n}", {b: runs.get(scale_name("auto", n, b)) for b in BUDGETS})
    rows = []
    for name, (b, a, t, cost, short) in sizes.items():
        if b is None or a is None or t is None:
            continue
        passes = bench.first_step_at_or_below(b.curve_step_test_dev, t.final_test_loss)
        rows.append(
            {
                "student": name,
                "student_params": b.params,
                "teacher_params": t.params,
                "steps": b.spec.steps,
                "teacher_final_loss": t.final_test_loss,
                "baseline_final_loss": b.final_test_loss,
                "gain_over_baseline": b.final_test_loss - a.final_test_loss,
                **against_baseline(a, b, costs.get(cost)),
                "baseline_passes_teacher_at": None if passes is None else passes / b.spec.steps,
                **scale_budget({k: r for k, r in short.items() if r}, a, b, costs.get(cost)),
                **scale_seeds(runs, name, a, b, costs.get(cost)),
            }
        )
    return sorted(rows, key=lambda r: r["student_params"])


def scale_budget(short: dict[float, RunResult], full: RunResult, base: RunResult, cost: dict | None) -> dict:
    """The budget form at one scale (seed 0): the automatic stop's shortened runs by budget and its full-length run
    as the budget 1.0, against the baseline's final test loss."""
    if not short:
        return {}
    stored = {r.spec.steps / base.spec.steps: r for r in short.values()} | {1.0: full}
    return {
        "budget_finals": {b: r.final_test_loss for b, r in short.items()},
        **budget_form(stored, base.final_test_loss, cost, base.spec.steps),
    }


def scale_seeds(runs: dict[str, RunResult], scale: str, auto0: RunResult, base0: RunResult, cost: dict | None) -> dict:
    """At a scale with more seeds (baseline_scale_<n>_s<k>, auto_scale_<n>_s<k>): the gain and steps-to-target over
    all seeds, seed 0 first; nothing where only seed 0 ran."""
    names = [(scale_name("auto", scale, seed=s), scale_name("baseline", scale, seed=s)) for s in SCALE_SEEDS]
    pairs = [(auto0, base0)] + [(runs[a], runs[b]) for a, b in names if a in runs and b in runs]
    if len(pairs) < 2:
        return {}
    rows = [against_baseline(a, b, cost) for a, b in pairs]
    return {
        "seeds": [a.spec.seed for a, _ in pairs],
        "baseline_final_loss_seeds": bench.seed_stats([b.final_test_loss for _, b in pairs]),
        "gain_over_baseline_seeds": bench.seed_stats([b.final_test_loss - a.final_test_loss for a, b in pairs]),
        "steps_to_target_ratio_seeds": bench.seed_stats([r["steps_to_target_ratio"] for r in rows], reached=True),
        "wallclock_to_target_ratio_seeds": bench.seed_stats(
            [r["wallclock_to_target_ratio"] for r in rows], reached=True
        ),
    }


def budget_form(stored: dict[float, RunResult], target: float, cost: dict | None, baseline_steps: int) -> dict:
    """Runs by budget fraction against `target`: `budget_to_target` in steps, and in wall-clock with each run's
    whole cost at the measured step costs (None before --step-cost ran)."""
    finals = {b: r.final_test_loss for b, r in stored.items()}
    walls = [wallclock(r, r.spec.steps, cost, baseline_steps) for r in stored.values()]
    by_wall = None if None in walls else dict(zip(walls, finals.values(), strict=True))
    return {
        "budget_to_target": budget_to_target(finals, target),
        "budget_wallclock_to_target": None if by_wall is None else budget_to_target(by_wall, target),
    }


FIXED = ("fixed_add_r0.2", "fixed_add_r0.4", "fixed_r0.2")  # fixed n_KD: the additive mix, and the paper's at 20%


def against_baseline(run: RunResult, base: RunResult, cost: dict | None) -> dict:
    """A one-seed run against its baseline: final loss, KD steps, steps- and wall-clock-to-target (fractions of the
    baseline's steps and time)."""
    reach = bench.first_step_at_or_below(run.curve_step_test_dev, base.final_test_loss)
    return {
        "final_test_loss": run.final_test_loss,
        "kd_steps": run.kd_steps,
        "steps_to_target_ratio": None if reach is None else reach / base.spec.steps,
        "wallclock_to_target_ratio": wallclock(run, reach, cost, base.spec.steps),
    }


def stacked_block(runs: dict[str, RunResult], plain: RunResult, cost: dict | None) -> dict:
    """The budget form with the speed-ups on both arms (seed 0): the automatic stop's budgets against the stacked
    baseline's final test loss, so the figure is SALT's own share; the speed-ups' own gain over the plain baseline
    beside it. The wall-clock weighs steps at the full rows' measured costs (both arms' first fifth is cheaper)."""
    base = runs.get("baseline_stacked")
    if base is None:
        return {}
    stored = {b: runs[stacked_name(b)] for b in STACKED_BUDGETS if stacked_name(b) in runs}
    return {
        "baseline_final_loss": base.final_test_loss,
        "speedups_gain_over_plain_baseline": plain.final_test_loss - base.final_test_loss,
        "budget_finals": {b: r.final_test_loss for b, r in stored.items()},
        "kd_steps": {b: r.kd_steps for b, r in stored.items()},
        **budget_form(stored, base.final_test_loss, cost, STEPS),
    }


def fixed_seeds_block(runs: dict[str, RunResult], bases: dict[int, RunResult]) -> dict:
    """n_KD fixed at 20% (additive mix) per seed beside the automatic stop: final loss and gain over the seed's
    baseline, for the seeds where both ran."""
    fixed = {s: runs.get("fixed_add_r0.2" if s == 0 else f"fixed_add_r0.2_s{s}") for s in bases}
    seeds = sorted(s for s, r in fixed.items() if r is not None)
    return {
        "seeds": seeds,
        "final_loss": bench.seed_stats([fixed[s].final_test_loss for s in seeds]),
        "gain_over_baseline": bench.seed_stats([bases[s].final_test_loss - fixed[s].final_test_loss for s in seeds]),
    }


def rise_after_end(run: RunResult, window: int = 1000) -> float | None:
    """How far the held-out test loss rose after the KD stage's end: the largest loss over the `window` steps after
    it less the loss at the last evaluation before it (negative: it kept falling)."""
    curve = run.curve_step_test_dev
    before = [t for s, t, _ in curve if s <= run.kd_steps]
    after = [t for s, t, _ in curve if run.kd_steps < s <= run.kd_steps + window]
    return max(after) - before[-1] if before and after and run.kd_steps else None


def seed_noise(bases: list[RunResult]) -> float | None:
    """The baselines' spread across seeds: the standard deviation of their test loss at the same step, averaged over
    the evaluations of the run's second half."""
    if len(bases) < 2:
        return None
    curves = [{s: t for s, t, _ in b.curve_step_test_dev} for b in bases]
    steps = [s for s in curves[0] if s >= STEPS // 2 and all(s in c for c in curves)]
    return statistics.mean(statistics.stdev([c[s] for c in curves]) for s in steps)


def budget_runs_of(runs: dict[str, RunResult], seed: int) -> dict[float, RunResult]:
    """The automatic stop's budget runs of `seed` by budget fraction, with its full-length run as the budget 1.0
    (once a shortened one ran)."""
    out = {b: runs[f"auto_budget_{b}_s{seed}"] for b in BUDGETS if f"auto_budget_{b}_s{seed}" in runs}
    full = runs.get(AUTO_S0 if seed == 0 else f"auto_s{seed}")
    return {**out, 1.0: full} if out and full else out


def budget_finals(runs: dict[str, RunResult], seed: int) -> dict[float, float]:
    return {b: r.final_test_loss for b, r in budget_runs_of(runs, seed).items()}


def _frac(step: int | None) -> float | None:
    return None if step is None else step / STEPS


def plot_corpus(corpus: str):
    """results/paper_regime/<corpus>/curves.png from the stored runs and the summary; its path (None: nothing yet)."""
    summary = json.loads((ROOT / "summary.json").read_text()).get(corpus, {})
    if "baseline_final_loss" not in summary:
        return None
    path = corpus_dir(corpus) / "curves.png"
    plot(corpus, bench.load_runs(runs_dir(corpus)), summary, path)
    return path


def write_summary(corpora: list[str]) -> dict:
    summary = {c: summarise(c) for c in corpora if runs_dir(c).is_dir()}
    bench.write_json(ROOT / "summary.json", summary, indent=1)
    return summary


# ---- point 0's report: the KD stage's end ---------------------------------------------------------------------------


def log_rows(run: RunResult, key: str) -> list[dict]:
    return [h for h in run.train_log if key in h]


def interpolate_step(curve: list[tuple[int, float]], loss: float) -> float | None:
    """The (linearly interpolated) step at which a falling `curve` of (step, loss) reaches `loss`; None beyond it."""
    for (s0, l0), (s1, l1) in zip(curve, curve[1:], strict=False):
        if l0 >= loss >= l1:
            return s0 + (s1 - s0) * (l0 - loss) / (l0 - l1) if l0 != l1 else s0
    return None


def head_start(corpus: str, col: str = "test", kd_run: str = "kd_all") -> dict:
    """From the cooldown branches: at each branch step, the annealed loss of the baseline, of KD for the whole run
    (`kd_run`: one per teacher, CEILING_RUNS) annealed plainly and with KD going on, the annealed lead (nats) and
    that lead in steps of the annealed baseline (the ceiling of what any end of the KD stage can keep);
    `head_start_ceiling` is the largest, as a fraction of the run."""
    path = corpus_dir(corpus) / "cooldowns.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    at = {(r["run"], r["step"], r["mode"]): r[col] for r in rows}
    base = sorted((step, v) for (run, step, _), v in at.items() if run == "baseline_s0")
    out = []
    for step, base_loss in base:
        row = {"step": step, "baseline": base_loss}
        for mode in ("plain", "kd"):
            loss = at.get((kd_run, step, mode))
            if loss is None:
                continue
            reached = interpolate_step(base, loss)
            row[f"kd_all_{mode}"] = loss
            row[f"lead_{mode}_nats"] = base_loss - loss
            row[f"lead_{mode}_steps"] = None if reached is None else reached - step
        out.append(row)
    leads = [r["lead_plain_steps"] for r in out if r.get("lead_plain_steps") is not None]
    return {"branches": out, "head_start_ceiling": max(leads) / STEPS if leads else None}


def end_report(corpus: str) -> dict:
    """Around the automatic stop of `auto_step_s0`: held-out losses, the gradient probe, AdamW's update norm and
    the entropies, beside the baseline's and KD-for-the-whole-run's; and the cooldown branches' head start."""
    runs = bench.load_runs(runs_dir(corpus))
    out = {"head_start": head_start(corpus)}
    base = runs.get("baseline_s0")
    for name in ("kd_all", "auto_step_s0", "auto_additive_s0", "auto_fall0.2_s0", "auto_fall0.5_s0", "fixed_r0.2"):
        run = runs.get(name)
        if run is None or base is None:
            continue
        stop = next((h for h in run.train_log if "kd_stop_step" in h), None)
        curve = {s: (t, d) for s, t, d in run.curve_step_test_dev}
        lead = [(s, base_t - curve[s][0]) for s, base_t, _ in base.curve_step_test_dev if s in curve]
        out[name] = {
            "kd_end_step": run.kd_steps,
            "kd_stop": stop,
            "final_test_loss": run.final_test_loss,
            "lead_over_baseline_test": lead,
            "probe": [
                {
                    k: h[k]
                    for k in ("step", "probe_kd_weight", "grad_norm_nll", "grad_norm_kd", "grad_cos_nll_kd")
                    if k in h
                }
                for h in log_rows(run, "probe_step")
            ],
            "update_norm": [
                (h["update_step"], h["update_norm_mean"], h["update_lr"]) for h in log_rows(run, "update_step")
            ],
            "entropy": [
                (h["step"], h["student_entropy"], h.get("teacher_entropy")) for h in log_rows(run, "student_entropy")
            ],
        }
    if base is not None:
        out["baseline_s0"] = {
            "final_test_loss": base.final_test_loss,
            "update_norm": [
                (h["update_step"], h["update_norm_mean"], h["update_lr"]) for h in log_rows(base, "update_step")
            ],
            "entropy": [(h["step"], h["student_entropy"]) for h in log_rows(base, "student_entropy")],
            "probe": [{k: h[k] for k in ("step", "grad_norm_nll")} for h in log_rows(base, "probe_step")],
        }
    return out


def print_end_report(report: dict) -> None:
    """A compact view of point 0's report: leads at each evaluation, the probe around the end, the head start."""
    for name in ("kd_all", "auto_step_s0", "auto_additive_s0", "auto_fall0.2_s0", "auto_fall0.5_s0", "fixed_r0.2"):
        r = report.get(name)
        if not r:
            continue
        leads = " ".join(f"{s}:{lead:+.3f}" for s, lead in r["lead_over_baseline_test"][::3])
        print(f"{name}: end {r['kd_end_step']} final {r['final_test_loss']:.4f}; lead over baseline (test) {leads}")
    for row in report["head_start"]["branches"]:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    print("head_start_ceiling", report["head_start"]["head_start_ceiling"])
