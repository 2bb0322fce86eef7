"""Does SALT pay off? Teacher, baseline, SALT schedules, a weight x n_KD grid, KD-for-the-whole-run (negative
control), a second teacher size and shortened budgets, on one prepared corpus (benchmarks/regime/prepare_corpora.py).

    python benchmarks/salt_suite/salt_benchmark.py --corpus python --device cuda --workers 7
    python benchmarks/salt_suite/salt_benchmark.py --corpus prose --device cpu --workers 1 --steps 600  # slow, 2 cores
    python benchmarks/salt_suite/salt_benchmark.py --corpus python --summarise-only                       # seconds

Every run is a SALTTrainer run (the recipe and the run itself are in bench.py) with the same data order for the same
seed. Validation rows (documents no run trains on) are split in two halves: `dev` picks the best setting, `test`
gives every number reported, so nothing is tuned on the reported text. Training writes
benchmarks/results/<corpus>/runs/*.json (raw); the summary step, which --summarise-only runs alone, reads them back
and writes benchmarks/results/<corpus>/summary.json, curves.png and benchmarks/results/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402
import torch  # noqa: E402
from bench import DEFAULT, RESULTS, WORK, RunResult, RunSpec  # noqa: E402

# The best setting by the dev half on both corpora (the grid in salt_suite/REPORT.md, seed 0): its seeds 1 and 2
BEST = dict(DEFAULT, kd_weight=0.75, kd_ratio=0.4)
# the groups whose seed-0 full-budget runs compete for "best setting" (by dev loss)
SETTING_GROUPS = ("default", "schedule", "grid", "teacher_size")


def suite(steps: int) -> tuple[list[RunSpec], list[RunSpec]]:
    """The teachers (trained first) and the students."""
    teachers = [bench.teacher_run(size, steps) for size in bench.TEACHERS]
    s = []
    for seed in (0, 1, 2):
        s.append(RunSpec(f"baseline_s{seed}", steps=steps, seed=seed, group="baseline"))
        s.append(RunSpec(f"salt_default_s{seed}", steps=steps, seed=seed, group="default", **DEFAULT))
    for sched in ("linear_decay", "linear_ratio_decay"):
        s.append(RunSpec(f"salt_{sched}", steps=steps, group="schedule", **{**DEFAULT, "kd_schedule": sched}))
    for w in (0.25, 0.5, 0.75):
        for r in (0.1, 0.2, 0.4):
            if (w, r) != (DEFAULT["kd_weight"], DEFAULT["kd_ratio"]):
                grid = {**DEFAULT, "kd_weight": w, "kd_ratio": r}
                s.append(RunSpec(f"salt_w{w}_r{r}", steps=steps, group="grid", **grid))
    s.append(RunSpec("rkd_whole_run", steps=steps, group="negative_control", **{**DEFAULT, "kd_ratio": 1.0}))
    s.append(RunSpec("salt_teacher_3m", steps=steps, group="teacher_size", **{**DEFAULT, "teacher": "3m"}))
    for seed in (1, 2):  # seed 0 of the best setting is its grid row
        s.append(RunSpec(f"salt_w0.75_r0.4_s{seed}", steps=steps, seed=seed, group="best_seeds", **BEST))
    for frac in (0.6, 0.7, 0.8):
        s.append(RunSpec(f"salt_budget_{frac}", steps=int(steps * frac), group="budget", **DEFAULT))
    for frac in (0.5, 0.6, 0.7):
        s.append(RunSpec(f"salt_best_budget_{frac}", steps=int(steps * frac), group="budget", **BEST))
    # the best setting with w falling linearly over its KD stage: does the rebound at n_KD go away? (REPORT.md)
    linear = {**BEST, "kd_schedule": "linear_decay"}
    s.append(RunSpec("salt_best_linear_decay", steps=steps, group="best_schedule", **linear))
    # SALT_DS: the default recipe with the KD stage drawn from the teacher's top-scored sequences
    for frac, seeds in ((0.5, (0, 1, 2)), (0.25, (0,)), (0.75, (0,))):
        for seed in seeds:
            extra = {"kd_data_selection": True, "kd_select_fraction": frac}
            name = f"salt_ds_f{frac}_s{seed}"
            s.append(RunSpec(name, steps=steps, seed=seed, group="salt_ds", extra=extra, **DEFAULT))
    # SALT_DS with the best setting's recipe, to compare against that setting's own runs
    extra = {"kd_data_selection": True, "kd_select_fraction": 0.75}
    s.append(RunSpec("salt_ds_best_f0.75_s0", steps=steps, group="salt_ds", extra=extra, **BEST))
    return teachers, s


# ---- training: every run writes <results>/<corpus>/runs/<name>.json ---------------------------------------------


def train_one(spec: RunSpec, corpus: str, device: str, results: Path, save_model: bool, threads: int | None = None):
    run_dir = WORK / corpus / "runs" / spec.name
    if spec.group == "teacher":  # where the students' runs load it from
        save_to = bench.teacher_dir(corpus, spec.model)
    else:  # students kept for the downstream check (benchmarks/salt_suite/downstream_eval.py)
        save_to = run_dir / "final" if save_model else None
    result = bench.train_run(spec, corpus, device, run_dir, save_to, threads)
    result.save(results / corpus / "runs" / f"{spec.name}.json")


def side_by_side_groups(teachers: list[RunSpec], students: list[RunSpec]) -> list[list[RunSpec]]:
    """The --side-by-side runs as groups of one seed: its baseline first, then the runs timed against it (a SALT run,
    and optionally more of that seed, e.g. a SALT_DS run), or a clear error before training."""
    if teachers:
        raise SystemExit("--side-by-side times students against baselines: train the teachers in a separate run first")
    base = {s.seed: s for s in students if s.group == "baseline"}
    others = [s for s in students if s.group != "baseline"]
    if not others or sorted(base) != sorted({s.seed for s in others}):
        raise SystemExit(
            "--side-by-side needs --only to name, per seed, one baseline_s<seed> and at least one other run of that "
            f"seed, e.g. --only baseline_s1,salt_w0.75_r0.4_s1; got {[s.name for s in students]}"
        )
    return [[base[seed]] + [s for s in others if s.seed == seed] for seed in sorted(base)]


def train(teachers: list[RunSpec], students: list[RunSpec], args) -> int:
    """Trains the runs, teachers first (the students distil from them); returns the number of workers it used."""
    one = partial(
        train_one, corpus=args.corpus, device=args.device, results=args.results.resolve(), save_model=args.save_models
    )
    if not args.side_by_side:
        bench.in_workers(one, teachers, args.workers)
        bench.in_workers(one, students, args.workers)
        return args.workers
    groups = side_by_side_groups(teachers, students)
    for group in groups:  # one seed at a time: its runs start together and share the machine
        threads = max(1, (os.cpu_count() or 2) // len(group)) if args.device == "cpu" else None
        print("side by side:", ", ".join(s.name for s in group), flush=True)
        bench.in_workers(partial(one, threads=threads), group, len(group))
    return max(len(g) for g in groups)


# ---- summary: over the stored runs -------------------------------------------------------------------------------


def first_step_staying_at_or_below(curve, target: float, col: int = 1) -> int | None:
    """The evaluation step from which every later evaluation is at or below `target` (None if the last is not)."""
    step = None
    for row in reversed(curve):
        if row[col] > target:
            break
        step = row[0]
    return step


def kd_switch(r: RunResult) -> dict | None:
    """The rebound check: logged gradient norm and test loss at the end of the KD stage and one evaluation later."""
    k, steps = r.kd_steps, r.spec.steps
    grad = {h["step"]: float(h["grad_norm"]) for h in r.train_log if "grad_norm" in h}
    test = {row[0]: row[1] for row in r.curve_step_test_dev}
    after = min((step for step in test if step > k), default=None)
    if not 0 < k < steps or k not in grad or k not in test or after not in grad:
        return None
    return {
        "step": k,
        "next": after,
        "grad_norm_ratio": grad[after] / grad[k],
        "test_loss_change": test[after] - test[k],
    }


def seed_runs(name: str, rows: dict) -> list[str]:
    """The seed-0 run `name` and its seeds 1 and 2, by the suite's naming (`x_s0`/`x_s1`, or `x` then `x_s1`)."""
    stem = name[: -len("_s0")] if name.endswith("_s0") else name
    return [name] + [f"{stem}_s{s}" for s in (1, 2) if f"{stem}_s{s}" in rows]


def run_row(r: RunResult, b: RunResult, base: dict[int, RunResult]) -> dict:
    """One student against `b`, its own seed's baseline: steps-to-target against b's final test loss, wall-clock-to-
    target against a baseline's whole training time on the same device (b's when it ran there, else seed 0's)."""
    same_device = [x for x in (b, *base.values()) if x.device == r.device]
    target = b.final_test_loss
    reach = bench.first_step_at_or_below(r.curve_step_test_dev, target)
    # the loss can rise again when KD switches off: also report from when it stays at or below the target
    stay = first_step_staying_at_or_below(r.curve_step_test_dev, target)
    t_reach, t_stay = r.time_to_step(reach), r.time_to_step(stay)
    base_time = sum(same_device[0].step_times_s) if same_device else None
    return {
        "group": r.spec.group,
        "seed": r.spec.seed,
        "device": r.device,
        "final_test_loss": r.final_test_loss,
        "final_dev_loss": r.final_dev_loss,
        "baseline_final_test_loss": target,
        "baseline_device": b.device,
        "steps": r.spec.steps,
        "kd_steps": r.kd_steps,
        "steps_to_target_ratio": reach / b.spec.steps if reach is not None else None,
        "steps_to_stay_at_target_ratio": stay / b.spec.steps if stay is not None else None,
        "wallclock_to_target_ratio": t_reach / base_time if t_reach is not None and base_time else None,
        "wallclock_to_stay_at_target_ratio": t_stay / base_time if t_stay is not None and base_time else None,
        "wallclock_baseline": f"baseline_s{same_device[0].spec.seed}" if same_device else None,
        "median_kd_step_s": r.median_kd_step_s,
        "median_plain_step_s": r.median_plain_step_s,
        "budget_reaches_target": r.final_test_loss <= target,
        "kd_switch": kd_switch(r),
    }


def seeds_block(names: list[str], rows: dict) -> dict:
    def stats(key):
        return bench.seed_stats([rows[n][key] for n in names])

    return {
        "runs": names,
        "steps_to_target_ratio": stats("steps_to_target_ratio"),
        "wallclock_to_target_ratio": stats("wallclock_to_target_ratio"),
        "steps_to_stay_at_target_ratio": stats("steps_to_stay_at_target_ratio"),
        "wallclock_to_stay_at_target_ratio": stats("wallclock_to_stay_at_target_ratio"),
        "final_test_loss": stats("final_test_loss"),
        "baseline_final_test_loss": stats("baseline_final_test_loss"),
    }


def summarise(corpus: str, results: dict[str, RunResult], steps: int, baselines: dict[str, RunResult]) -> dict:
    """Per-run rows and the suite's headline numbers. Each run is measured against its own seed's baseline (see
    `run_row`); `baselines` supplies baseline runs missing from `results` (e.g. GPU baselines for a part of the
    suite rerun on CPU); each row says which baseline it used."""
    pool = {**baselines, **{k: v for k, v in results.items() if k.startswith("baseline_s")}}
    base = {s: pool[f"baseline_s{s}"] for s in (0, 1, 2) if f"baseline_s{s}" in pool}
    rows = {}
    for name, r in results.items():
        if r.spec.group == "teacher":
            rows[name] = {"final_test_loss": r.final_test_loss, "params": r.params, "steps": r.spec.steps}
        elif r.spec.seed in base:
            rows[name] = run_row(r, base[r.spec.seed], base)
    summary = {
        "corpus": corpus,
        "steps": steps,
        "baseline_final_test_loss": bench.seed_stats([base[s].final_test_loss for s in sorted(base)]),
        "runs": rows,
    }
    # best setting: lowest final DEV loss among seed-0 SALT settings on the full budget (never the test half)
    candidates = {
        n: r for n, r in rows.items() if r.get("group") in SETTING_GROUPS and r["seed"] == 0 and r["steps"] == steps
    }
    if candidates:
        best = min(candidates, key=lambda n: candidates[n]["final_dev_loss"])
        spec = results[best].spec
        setting = {k: getattr(spec, k) for k in ("kd_weight", "kd_ratio", "kd_schedule", "teacher")}
        summary["best_setting_by_dev"] = {"run": best, "setting": setting, **seeds_block(seed_runs(best, rows), rows)}
    if "salt_default_s0" in rows:
        spec = asdict(results["salt_default_s0"].spec)
        summary["default_setting"] = {"spec": spec, **seeds_block(seed_runs("salt_default_s0", rows), rows)}
    ds = [f"salt_ds_f0.5_s{s}" for s in (0, 1, 2) if f"salt_ds_f0.5_s{s}" in rows]
    if ds:
        summary["salt_ds_f0.5"] = seeds_block(ds, rows)
    return summary


def stored_runs(args) -> tuple[dict[str, RunResult], dict[str, RunResult]]:
    """The stored runs of this budget (teachers and shortened budgets whatever their steps), and the baselines that
    --baselines-from lends. When this folder holds only seeds 1-2 of the lending suite's best setting, its seed-0 run
    (and so the choice of setting) comes from there too."""
    stored = bench.load_runs(args.results.resolve() / args.corpus / "runs")
    results = {k: r for k, r in stored.items() if r.spec.steps == args.steps or r.spec.group in ("teacher", "budget")}
    if not args.baselines_from:
        return results, {}
    src = args.baselines_from.resolve() / args.corpus / "runs"
    baselines = {p.stem: RunResult.load(p) for p in src.glob("baseline_s*.json")}
    full = src.parent / "summary.json"
    best = json.loads(full.read_text()).get("best_setting_by_dev", {}).get("run") if full.is_file() else None
    if (
        best
        and best not in results
        and (src / f"{best}.json").is_file()
        and not any(r.spec.group in SETTING_GROUPS for r in results.values())
    ):
        results[best] = RunResult.load(src / f"{best}.json")
    return results, baselines


def write_top_summary() -> dict:
    """benchmarks/results/summary.json: per corpus, the best SALT setting's headline numbers, from the suite summary
    that holds the most seeds of it (a full suite, or a rerun of part of it in a subfolder such as results/cpu),
    preferring one whose wall-clock was timed side by side (--side-by-side)."""
    top = {}
    for path in sorted(RESULTS.glob("**/summary.json")):
        s = json.loads(path.read_text())
        best = s.get("best_setting_by_dev") if isinstance(s, dict) and "corpus" in s else None
        if not best:
            continue
        # most seeds first; among those, wall-clock timed side by side beats runs timed one after another
        n = (sum(v is not None for v in best["steps_to_target_ratio"]["seeds"]), s.get("timing") == "side_by_side")
        if s["corpus"] in top and top[s["corpus"]]["_n"] >= n:
            continue
        ratios = ("steps_to_target_ratio", "wallclock_to_target_ratio")
        default = {k: s["default_setting"][k] for k in ratios} if "default_setting" in s else None
        top[s["corpus"]] = {
            "_n": n,
            "timing": s.get("timing"),
            "setting": best["setting"],
            "best_run": best["run"],
            "steps_to_target_ratio": best["steps_to_target_ratio"],
            "wallclock_to_target_ratio": best["wallclock_to_target_ratio"],
            "steps_to_stay_at_target_ratio": best["steps_to_stay_at_target_ratio"],
            "wallclock_to_stay_at_target_ratio": best.get("wallclock_to_stay_at_target_ratio"),
            "final_test_loss": best["final_test_loss"],
            "baseline_final_validation_loss": best["baseline_final_test_loss"],
            "default_setting": default,
            "device": s.get("device"),
            "source": str(path.relative_to(RESULTS)),
        }
    for v in top.values():
        v.pop("_n")
    bench.write_json(RESULTS / "summary.json", top, indent=2)
    return top


def plot(corpus: str, results: dict[str, RunResult], path: Path) -> None:
    if "baseline_s0" not in results:  # a part of the suite without its baseline: nothing to draw against
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, style in [
        ("baseline_s0", "-"),
        ("salt_default_s0", "-"),
        ("salt_w0.75_r0.4", "-"),
        ("rkd_whole_run", "--"),
        ("salt_teacher_3m", ":"),
        ("salt_ds_best_f0.75_s0", "-."),
        ("salt_best_linear_decay", "-."),
    ]:
        if name not in results:
            continue
        curve = results[name].curve_step_test_dev
        ax.plot([c[0] for c in curve], [c[1] for c in curve], style, marker="o", markersize=3, label=name)
    baseline = results["baseline_s0"]
    ax.axhline(baseline.final_test_loss, color="grey", lw=0.8, ls=":")
    ax.set_ylim(top=min(8.0, max(c[1] for c in baseline.curve_step_test_dev[1:]) + 0.3))
    ax.set(xlabel="optimizer step", ylabel="held-out test loss (nats/token)", title=f"{corpus}: SALT vs baseline")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summaries(args, figures: dict) -> None:
    """The summary step: `<results>/<corpus>/summary.json` and curves.png from the stored runs, and the top one."""
    results, baselines = stored_runs(args)
    summary = summarise(args.corpus, results, args.steps, baselines)
    out = args.results.resolve() / args.corpus
    summary.update(bench.invocation_figures(out / "summary.json", figures, args.summarise_only))
    summary["runs_train_wall_s"] = sum(r.train_wall_s for r in results.values())
    bench.write_json(out / "summary.json", summary, indent=2)
    plot(args.corpus, results, out / "curves.png")
    top = write_top_summary()
    print(json.dumps({"best_setting_by_dev": summary.get("best_setting_by_dev"), "summary.json": top}, indent=1))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma-separated run names (a part of the suite)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where runs/ and summary.json go, per corpus")
    parser.add_argument(
        "--baselines-from",
        type=Path,
        default=None,
        help="results folder whose baseline runs fill in missing seeds (and whose best setting's seed-0 run joins "
        "a rerun of that setting's seeds 1-2)",
    )
    parser.add_argument("--save-models", action="store_true", help="save each student (for downstream_eval.py)")
    parser.add_argument("--summarise-only", action="store_true", help="train nothing: summarise the stored runs")
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="time each seed's runs against its baseline run at the same time (one process each, the cores split "
        "between them) so that machine drift hits all alike; --only names, per seed, its baseline and the other runs",
    )
    return parser.parse_args()


def main():
    args = parse_args()
    t0 = time.time()
    teachers, students = suite(args.steps)
    if args.only:
        keep = set(args.only.split(","))
        teachers, students = [r for r in teachers if r.name in keep], [r for r in students if r.name in keep]
    if not args.summarise_only:
        workers = train(teachers, students, args)
        timing = "side_by_side" if args.side_by_side else "sequential" if workers == 1 else "shared"
        figures = dict(suite_wall_s=time.time() - t0, device=args.device, workers=workers, timing=timing)
    else:  # keep the figures of the invocation that trained
        figures = dict.fromkeys(("suite_wall_s", "device", "workers", "timing"))
    write_summaries(args, figures)


if __name__ == "__main__":
    main()
