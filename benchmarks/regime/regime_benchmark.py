"""SALT in its own regime: a student that outgrows its small teacher during the run (issue 17).

    python benchmarks/regime/regime_benchmark.py --prepare                    # corpora with a 300-token vocabulary
    python benchmarks/regime/regime_benchmark.py --corpus python              # every run not stored yet, pair by pair
    python benchmarks/regime/regime_benchmark.py --corpus python --summarise-only
    python benchmarks/regime/regime_benchmark.py --step-cost   # on an idle machine: the step costs below

The suite first shows that it is in SALT's regime (the baseline student passes the teacher's final held-out loss
before half of its run, and KD for the whole run ends ABOVE the baseline: the paper's negative control), then
measures fixed n_KD of 10 / 20 / 40 % at w 0.5, the automatic stop (`kd_steps="auto"`), three seeds of the
baseline, the best fixed setting (by the dev half) and the automatic stop, and a teacher-strength axis of three
teacher sizes. Teachers are small Llamas (one or two narrow layers) trained to their own convergence on the same
training text; the students are one size larger than anything they learn from.

Runs go two at a time, one CPU thread each (in the order of `students`), so that the machine's drift hits a pair
alike; each run's JSON is written to benchmarks/results/regime/<corpus>/runs/ as it finishes (and committed with
--commit), and a rerun skips the stored runs, so the suite resumes where it was stopped. The summary step reads the
stored runs back and writes benchmarks/results/regime/summary.json and <corpus>/curves.png.

Wall-clock-to-target is steps-to-target weighted by step costs measured apart (--step-cost: step_cost.py on the
suite's student and each teacher, plain Trainer step / KD step / plain-stage step interleaved in one process, one
thread, on an otherwise idle machine: results/regime/step_cost.json), because the pairs' own step times share the two
cores with each other and with whatever else runs. SALT's time is its KD steps at the KD step's cost plus its
remaining steps at the plain-stage step's cost (and SALT_DS's scoring); the baseline's is its steps at the plain
Trainer step's cost. The times read within each run are kept beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402
import torch  # noqa: E402
from bench import RESULTS, WORK, RunResult, RunSpec  # noqa: E402

ROOT = RESULTS / "regime"
VOCAB, SEQ = 300, 128  # a small vocabulary puts the parameters in the layers, where capacity differs
STEPS, TEACHER_STEPS = 1000, 6000  # the teachers train 6x the students' budget: to their own convergence
STUDENT = "4x192"
TEACHERS = {"weak": "1x16", "main": "1x32", "strong": "1x64"}
N_EVALS = 25  # held-out evaluations per student run: steps-to-target is read at a resolution of STEPS / 25
W = 0.5
FIXED_RATIOS = (0.1, 0.2, 0.4)
BUDGETS = (0.7, 0.8)  # the budget form: the automatic stop on a shortened run, its schedule fit to it
STEP_COST = RESULTS / "regime" / "step_cost.json"  # written by --step-cost


def corpus_name(corpus: str) -> str:
    return f"regime_{corpus}"  # its folder under benchmarks/work (prepared by --prepare)


def student(name: str, seed: int = 0, teacher: str = "main", steps: int = STEPS, **kd) -> RunSpec:
    every = STEPS // N_EVALS  # the same evaluation steps in a shortened run
    extra = {"eval_steps": every, "logging_steps": every, **kd.pop("extra", {})}
    if not kd:
        return RunSpec(name, model=STUDENT, steps=steps, seed=seed, group="baseline", extra=extra)
    group = kd.pop("group")
    return RunSpec(name, model=STUDENT, steps=steps, seed=seed, teacher=teacher, group=group, extra=extra, **kd)


def auto(name: str, seed: int = 0, teacher: str = "main", extra: dict | None = None) -> RunSpec:
    extra = {"kd_steps": "auto", **(extra or {})}
    return student(name, seed, teacher, kd_weight=W, kd_ratio=None, group="auto", extra=extra)


def budget(fraction: float) -> RunSpec:
    """The automatic stop trained for `fraction` of the steps, its cosine schedule and stop bounds fit to them."""
    steps = round(STEPS * fraction)
    extra = {"kd_steps": "auto"}
    return student(f"auto_budget_{fraction}", steps=steps, kd_weight=W, kd_ratio=None, group="budget", extra=extra)


def fixed(name: str, ratio: float, seed: int = 0) -> RunSpec:
    return student(name, seed, kd_weight=W, kd_ratio=ratio, group="fixed")


def kd_all(name: str, teacher: str) -> RunSpec:
    return student(name, teacher=teacher, kd_weight=W, kd_ratio=1.0, group="kd_all")


def teacher_runs() -> list[RunSpec]:
    every = TEACHER_STEPS // N_EVALS
    extra = {"eval_steps": every, "logging_steps": every}
    return [
        RunSpec(f"teacher_{t}", model=size, steps=TEACHER_STEPS, group="teacher", extra=extra)
        for t, size in TEACHERS.items()
    ]


def students(best_ratio: float | None) -> list[RunSpec]:
    """The student runs in the order they train, two at a time; the best fixed n_KD's seeds 1 and 2 come last (the
    seed-0 runs pick it by the dev half)."""
    out = [
        kd_all("kd_all", "main"),
        fixed("salt_r0.1", 0.1),
        fixed("salt_r0.2", 0.2),
        fixed("salt_r0.4", 0.4),
        kd_all("kd_all_weak", "weak"),
        kd_all("kd_all_strong", "strong"),
        student("baseline_s0"),
        auto("auto_s0"),
        student("baseline_s1", seed=1),
        auto("auto_s1", seed=1),
        student("baseline_s2", seed=2),
        auto("auto_s2", seed=2),
        auto("auto_weak", teacher="weak"),
        auto("auto_strong", teacher="strong"),
        auto("auto_ds", extra={"kd_data_selection": True}),  # SALT_DS: the KD stage on the teacher's selection
        *[budget(f) for f in BUDGETS],
    ]
    if best_ratio is not None:
        out += [fixed(f"salt_r{best_ratio}_s{seed}", best_ratio, seed) for seed in (1, 2)]
    return out


# ---- training ---------------------------------------------------------------------------------------------------


def runs_dir(corpus: str) -> Path:
    return ROOT / corpus / "runs"


def train_one(spec: RunSpec, corpus: str, device: str, threads: int | None):
    name = corpus_name(corpus)
    save_to = bench.teacher_dir(name, spec.name.removeprefix("teacher_")) if spec.group == "teacher" else None
    result = bench.train_run(spec, name, device, WORK / name / "runs" / spec.name, save_to, threads)
    result.save(runs_dir(corpus) / f"{spec.name}.json")


def commit(paths: list[Path], message: str) -> None:
    """Commits the stored runs (and nothing else) so that a stopped session keeps them."""
    files = [str(p.resolve()) for p in paths if p.is_file()]
    repo = Path(files[0]).parent  # the repository that holds the results (a results folder may be linked in)
    for _ in range(5):  # another commit may hold the index lock for a moment
        subprocess.run(["git", "add", "--", *files], check=False, cwd=repo)
        done = subprocess.run(["git", "commit", "-q", "-m", message, "--", *files], check=False, cwd=repo)
        if done.returncode == 0:
            return
        time.sleep(2)
    print(f"could not commit {files}", file=sys.stderr)


def train_group(group: list[RunSpec], args) -> None:
    """Trains `group` side by side (one process each) and stores, and with --commit commits, each run's JSON."""
    # one thread per run: a pair shares the two cores; on a GPU machine each run gets its share of the CPU too
    threads = 1 if args.device == "cpu" else None
    print("side by side:", ", ".join(s.name for s in group), flush=True)
    one = partial(train_one, corpus=args.corpus, device=args.device, threads=threads)
    bench.in_workers(one, group, len(group))
    if args.commit:
        paths = [runs_dir(args.corpus) / f"{s.name}.json" for s in group]
        commit(paths, f"regime benchmark ({args.corpus}): {', '.join(s.name for s in group)}")


def to_train(specs: list[RunSpec], args) -> list[RunSpec]:
    """The runs of `specs` not stored yet (and named by --only, when given)."""
    todo = [s for s in specs if not (runs_dir(args.corpus) / f"{s.name}.json").is_file()]
    return [s for s in todo if s.name in args.only.split(",")] if args.only else todo


def best_fixed_ratio(corpus: str) -> float | None:
    """The fixed n_KD whose seed-0 run has the lowest final DEV loss (never the test half), once all three ran."""
    runs = {r: runs_dir(corpus) / f"salt_r{r}.json" for r in FIXED_RATIOS}
    if not all(p.is_file() for p in runs.values()):
        return None
    return min(runs, key=lambda r: RunResult.load(runs[r]).final_dev_loss)


def train(args) -> None:
    teachers = to_train(teacher_runs(), args)
    if teachers:
        train_group(teachers, args)  # small and quick: all at once
    # two at a time; the list is drawn again after each pair, so the best fixed n_KD's seeds join once known
    while todo := to_train(students(best_fixed_ratio(args.corpus)), args):
        train_group(todo[:2], args)


# ---- summary: over the stored runs -------------------------------------------------------------------------------


def crossing_step(run: RunResult, loss: float) -> int | None:
    """The first evaluation step at which `run`'s held-out test loss is at or below `loss` (a teacher's final)."""
    return bench.first_step_at_or_below(run.curve_step_test_dev, loss)


def run_row(r: RunResult, base: RunResult, teachers: dict[str, RunResult], costs: dict) -> dict:
    """One student against its own seed's baseline: steps and wall-clock (teacher forward and SALT_DS scoring
    included) to reach the baseline's final test loss, as fractions of the baseline's; where it crossed its teacher;
    where KD ended. Wall-clock at the step costs measured apart (`costs`), and as read within the run and against the
    baseline run."""
    target = base.final_test_loss
    reach = bench.first_step_at_or_below(r.curve_step_test_dev, target)
    t_reach = r.time_to_step(reach)
    within = wallclock_within_run(r, reach, base.spec.steps)
    measured = wallclock_at_measured_cost(r, reach, base.spec.steps, costs.get(r.spec.teacher or "main"))
    teacher = teachers.get(r.spec.teacher or "main")
    stop = next((h for h in r.train_log if "kd_stop_step" in h), None)  # kd_steps="auto": the decision's why
    return {
        "group": r.spec.group,
        "seed": r.spec.seed,
        "teacher": r.spec.teacher,
        "final_test_loss": r.final_test_loss,
        "final_dev_loss": r.final_dev_loss,
        "baseline_final_test_loss": target,
        "steps_to_target_ratio": reach / base.spec.steps if reach is not None else None,
        "wallclock_to_target_ratio": measured,
        "wallclock_to_target_ratio_in_run": within,
        "wallclock_to_target_ratio_vs_baseline_run": t_reach / sum(base.step_times_s) if t_reach is not None else None,
        "median_kd_step_over_plain_step": (
            r.median_kd_step_s / r.median_plain_step_s if r.median_kd_step_s and r.median_plain_step_s else None
        ),
        "kd_end_step": r.kd_steps,
        "crosses_teacher_at_step": crossing_step(r, teacher.final_test_loss) if teacher else None,
        # during KD, on its training batches: the first logging step with its loss at or below the teacher's
        "catches_up_on_train_batches_at": next(
            (h["step"] for h in r.train_log if "teacher_nll" in h and h["nll_loss"] <= h["teacher_nll"]), None
        ),
        "kd_stop": stop,
        "train_wall_s": r.train_wall_s,
    }


def wallclock_within_run(r: RunResult, reach: int | None, baseline_steps: int) -> float | None:
    """
    Wall-clock-to-target read within one run: its steps to the target at its own median KD-step and plain-step
    times (SALT_DS's scoring added), over the baseline's steps at its median plain-step time. A plain step is the
    baseline's computation, so the ratio needs no second run and no machine drift or co-running load between runs
    enters it; medians keep out the spikes of a shared machine.
    """
    t_plain = r.median_plain_step_s or (r.median_kd_step_s if r.kd_steps == 0 else None)
    if reach is None or not t_plain:
        return None
    kd_steps = min(reach, r.kd_steps)
    kd_time = kd_steps * r.median_kd_step_s if kd_steps else 0.0
    return (kd_time + (reach - kd_steps) * t_plain + r.scoring_s) / (baseline_steps * t_plain)


def wallclock_at_measured_cost(r: RunResult, reach: int | None, baseline_steps: int, cost: dict | None):
    """
    Wall-clock-to-target at the step costs measured apart (step_cost.py, one process, interleaved): the run's KD
    steps at the KD step's cost (teacher forward included) and its later steps at the plain-stage step's, both on the
    loss path SALTTrainer takes by default (fused_linear), plus SALT_DS's scoring in units of the run's own median
    plain step; over the baseline's steps at the plain Trainer step's cost.
    """
    if reach is None or cost is None:
        return None
    kd_steps = min(reach, r.kd_steps)
    t_plain, t_kd, t_after = cost["plain_step_s"], cost["kd_fused_step_s"], cost["plain_fused_step_s"]
    scoring = r.scoring_s / r.median_plain_step_s * t_after if r.scoring_s and r.median_plain_step_s else 0.0
    return (kd_steps * t_kd + (reach - kd_steps) * t_after + scoring) / (baseline_steps * t_plain)


def measure_step_costs() -> None:
    """The suite's student with each teacher, the real row length and batch (bench.measure_step_costs)."""
    bench.measure_step_costs({t: (STUDENT, size) for t, size in TEACHERS.items()}, STEP_COST, VOCAB, SEQ)


def stats_block(names: list[str], rows: dict) -> dict:
    have = [n for n in names if n in rows]
    block = {"runs": have}
    for key in ("steps_to_target_ratio", "wallclock_to_target_ratio", "final_loss"):
        column = "final_test_loss" if key == "final_loss" else key
        block[key] = bench.seed_stats([rows[n][column] for n in have])
    return block


def teacher_row(t: RunResult) -> dict:
    """A teacher's final test loss and how much its last half still gained: converged when that is small."""
    curve = t.curve_step_test_dev
    half = next(row for row in curve if row[0] >= t.spec.steps // 2)
    return {
        "final_test_loss": t.final_test_loss,
        "params": t.params,
        "steps": t.spec.steps,
        "test_loss_at_half": half[1],
        "gain_of_last_half": half[1] - t.final_test_loss,
    }


def regime_check(runs: dict[str, RunResult], teachers: dict[str, RunResult]) -> dict:
    """Is the suite in SALT's regime? The baseline passes the teacher before half its run, and KD for the whole run
    ends above the baseline (per teacher)."""
    base = runs["baseline_s0"]
    out = {}
    for t, teacher in teachers.items():
        cross = crossing_step(base, teacher.final_test_loss)
        control = runs.get("kd_all" if t == "main" else f"kd_all_{t}")
        out[t] = {
            "baseline_crosses_teacher_at_step": cross,
            "baseline_crosses_before_half": cross is not None and cross < base.spec.steps / 2,
            "kd_all_final_loss": control.final_test_loss if control else None,
            "kd_all_ends_above_baseline": control.final_test_loss > base.final_test_loss if control else None,
        }
    return out


def summarise(corpus: str) -> dict:
    runs = bench.load_runs(runs_dir(corpus))
    teachers = {n.removeprefix("teacher_"): r for n, r in runs.items() if r.spec.group == "teacher"}
    base = {r.spec.seed: r for r in runs.values() if r.spec.group == "baseline"}
    costs = bench.load_step_costs(STEP_COST)
    rows = {
        n: run_row(r, base[r.spec.seed], teachers, costs)
        for n, r in runs.items()
        if r.spec.group != "teacher" and r.spec.seed in base
    }
    out = {
        "corpus": corpus,
        "steps": STEPS,
        "student": STUDENT,
        "teachers": {t: teacher_row(r) for t, r in teachers.items()},
    }
    if "baseline_s0" not in runs or "main" not in teachers:
        return {**out, "runs": rows}
    best = best_fixed_ratio(corpus)
    best_names = [f"salt_r{best}"] + [f"salt_r{best}_s{seed}" for seed in (1, 2)] if best is not None else []
    auto_names = ["auto_s0", "auto_s1", "auto_s2"]
    out.update(
        regime=regime_check(runs, teachers),
        baseline_final_loss=bench.seed_stats([base[s].final_test_loss for s in sorted(base)]),
        kd_all_final_loss=runs["kd_all"].final_test_loss if "kd_all" in runs else None,
        teacher_final_loss=teachers["main"].final_test_loss,
        best_fixed={"kd_ratio": best, **stats_block(best_names, rows)},
        auto=stats_block(auto_names, rows),
        auto_stop_steps=[runs[n].kd_steps if n in runs else None for n in auto_names],
        teacher_strength=teacher_strength(rows, teachers),
        budget_form=budget_form(runs, base[0], costs.get("main")),
        runs=rows,
    )
    return out


def budget_form(runs: dict[str, RunResult], base: RunResult, cost: dict | None) -> list[dict]:
    """The automatic stop on shortened budgets: does its final test loss reach the seed-0 baseline's final, and at
    what wall-clock (measured step costs) against the baseline's whole run."""
    out = []
    for fraction in BUDGETS:
        r = runs.get(f"auto_budget_{fraction}")
        if r is None:
            continue
        wall = wallclock_at_measured_cost(r, r.spec.steps, base.spec.steps, cost)
        out.append(
            {
                "run": r.spec.name,
                "steps_ratio": r.spec.steps / base.spec.steps,
                "final_test_loss": r.final_test_loss,
                "baseline_final_test_loss": base.final_test_loss,
                "reaches_target": r.final_test_loss <= base.final_test_loss,
                "wallclock_ratio": wall,
                "kd_end_step": r.kd_steps,
            }
        )
    return out


def teacher_strength(rows: dict, teachers: dict[str, RunResult]) -> list[dict]:
    """Per teacher: its final loss and the automatic stop's gain over the seed-0 baseline (nats, and in steps)."""
    out = []
    for t, teacher in sorted(teachers.items(), key=lambda kv: -kv[1].final_test_loss):
        name = "auto_s0" if t == "main" else f"auto_{t}"
        if name in rows:
            row = rows[name]
            out.append(
                {
                    "teacher": t,
                    "teacher_final_loss": teacher.final_test_loss,
                    "teacher_params": teacher.params,
                    "run": name,
                    "gain_nats": row["baseline_final_test_loss"] - row["final_test_loss"],
                    "steps_to_target_ratio": row["steps_to_target_ratio"],
                    "kd_end_step": row["kd_end_step"],
                }
            )
    return out


def plot(corpus: str, summary: dict) -> None:
    runs = bench.load_runs(runs_dir(corpus))
    if "baseline_s0" not in runs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in ("baseline_s0", "kd_all", "salt_r0.1", "salt_r0.2", "salt_r0.4", "auto_s0"):
        if name in runs:
            curve = runs[name].curve_step_test_dev[2:]
            ax.plot([c[0] for c in curve], [c[1] for c in curve], "--" if name == "kd_all" else "-", label=name)
    for t, row in summary["teachers"].items():
        ax.axhline(row["final_test_loss"], color="grey", lw=0.8, ls=":")
        ax.annotate(f"teacher {t}", (STEPS * 0.02, row["final_test_loss"]), fontsize=8, va="bottom")
    ax.set(xlabel="optimizer step", ylabel="held-out test loss (nats/token)", title=f"{corpus}: {STUDENT} student")
    ax.set_ylim(top=summary["teachers"]["main"]["final_test_loss"] + 0.4)
    ax.legend()
    axis = summary.get("teacher_strength") or []
    bx.plot([a["teacher_final_loss"] for a in axis], [a["gain_nats"] for a in axis], "o-")
    for a in axis:
        bx.annotate(a["teacher"], (a["teacher_final_loss"], a["gain_nats"]), fontsize=8)
    bx.axhline(0, color="grey", lw=0.8)
    bx.set(xlabel="teacher's final test loss", ylabel="gain over baseline (nats, auto stop)", title="teacher strength")
    fig.tight_layout()
    fig.savefig(ROOT / corpus / "curves.png", dpi=110)
    plt.close(fig)


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _stats(block: dict, key: str) -> str:
    st = block[key]
    seeds = ", ".join(_fmt(v) for v in st["seeds"])
    return "-" if st["mean"] is None else f"{st['mean']:.3f} +- {st['std']:.3f} ({seeds})"


def markdown(summary: dict) -> str:
    """REPORT.md's tables for one corpus, from its summary."""
    lines = [
        "| teacher | size | final test loss | gain in its last half | baseline passes it at step | KD all run |",
        "|---|---|---|---|---|---|",
    ]
    for t, row in summary["teachers"].items():
        reg = summary.get("regime", {}).get(t, {})
        lines.append(
            f"| {t} | {TEACHERS[t]} ({row['params']:,}) | {_fmt(row['final_test_loss'])} | "
            f"{_fmt(row['gain_of_last_half'])} | {_fmt(reg.get('baseline_crosses_teacher_at_step'))} | "
            f"{_fmt(reg.get('kd_all_final_loss'))} |"
        )
    lines += [
        "",
        "| run | final test loss | steps-to-target | wall-clock-to-target (measured / in run / vs baseline run) | "
        "KD ends at | passes teacher at |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in sorted(summary.get("runs", {}).items()):
        wall = " / ".join(
            _fmt(r.get(k))
            for k in (
                "wallclock_to_target_ratio",
                "wallclock_to_target_ratio_in_run",
                "wallclock_to_target_ratio_vs_baseline_run",
            )
        )
        lines.append(
            f"| {name} | {_fmt(r['final_test_loss'])} | {_fmt(r['steps_to_target_ratio'], 2)} | {wall} | "
            f"{r['kd_end_step']} | {_fmt(r['crosses_teacher_at_step'])} |"
        )
    if summary.get("budget_form"):
        lines += [
            "",
            "| budget run | steps | final test loss | baseline final | reaches it | wall-clock | KD ends at |",
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for b in summary["budget_form"]:
            cells = [_fmt(b["steps_ratio"], 2), _fmt(b["final_test_loss"]), _fmt(b["baseline_final_test_loss"])]
            cells += [str(b["reaches_target"]), _fmt(b["wallclock_ratio"]), str(b["kd_end_step"])]
            lines.append(f"| {b['run']} | " + " | ".join(cells) + " |")
    if "auto" in summary:
        lines += ["", "| setting | steps-to-target | wall-clock-to-target | final test loss |", "|---|---|---|---|"]
        for key in ("auto", "best_fixed"):
            block = summary[key]
            cells = [_stats(block, k) for k in ("steps_to_target_ratio", "wallclock_to_target_ratio", "final_loss")]
            lines.append(f"| {key} ({', '.join(block['runs'])}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(corpora: list[str]) -> dict:
    path = ROOT / "summary.json"
    top = json.loads(path.read_text()) if path.is_file() else {}
    for corpus in corpora:
        top[corpus] = summarise(corpus)
        plot(corpus, top[corpus])
        (ROOT / corpus / "tables.md").write_text(markdown(top[corpus]))
    bench.write_json(path, top, indent=2)
    return top


def prepare(corpora: list[str]) -> None:
    """The suite's corpora: prepare_corpora.py's text and held-out documents, a 300-token BPE, rows of 128."""
    import prepare_corpora

    from salt_hf.data import builtin_corpus

    for corpus in corpora:
        if corpus == "python":
            text = builtin_corpus(validation_fraction=prepare_corpora.VALIDATION_FRACTION)
            text = text.rename_column("path", "name") if "path" in text["train"].column_names else text
        else:
            text = prepare_corpora.prose_corpus()
        if text is not None:
            prepare_corpora.prepare(corpus_name(corpus), text, VOCAB, SEQ)
            restore_teachers(corpus)


def restore_teachers(corpus: str) -> None:
    """A suite resumed on a fresh checkout: the stored teachers (results/regime/<corpus>/stored, committed with their
    runs) go back where the students load them from, once the corpus just prepared has the same tokenizer."""
    stored, work = ROOT / corpus / "stored", WORK / corpus_name(corpus)
    if not (stored / "teachers").is_dir():
        return
    same = (stored / "tokenizer" / "tokenizer.json").read_text() == (work / "tokenizer" / "tokenizer.json").read_text()
    if not same:
        raise SystemExit(f"{corpus}: the tokenizer prepared now differs from the stored teachers' one: retrain them")
    shutil.copytree(stored / "teachers", work / "teachers", dirs_exist_ok=True)


# ---- entry point --------------------------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=("python", "prose"))
    parser.add_argument("--prepare", action="store_true", help="prepare both corpora and exit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default=None, help="comma-separated run names (a part of the suite)")
    parser.add_argument("--commit", action="store_true", help="git-commit each pair's stored runs as they finish")
    parser.add_argument("--summarise-only", action="store_true", help="train nothing: summarise the stored runs")
    parser.add_argument("--step-cost", action="store_true", help="measure the step costs of wall-clock and exit")
    return parser.parse_args()


def main():
    args = parse_args()
    if args.prepare:
        return prepare(["python", "prose"])
    if args.step_cost:
        return measure_step_costs()
    if args.corpus is None:
        raise SystemExit("--corpus python or --corpus prose (or --prepare)")
    t0 = time.time()
    if not args.summarise_only:
        train(args)
        print(f"suite: {time.time() - t0:.0f}s", flush=True)
    top = write_summary([args.corpus])
    keys = ("regime", "baseline_final_loss", "kd_all_final_loss", "teacher_final_loss", "best_fixed", "auto")
    print(json.dumps({k: top[args.corpus].get(k) for k in keys}, indent=1))


if __name__ == "__main__":
    main()
