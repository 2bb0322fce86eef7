"""SALT where the paper measured it: a teacher about half the student's size, ~20 tokens per parameter (issue 24).

    python benchmarks/regime_benchmark.py --prepare                     # the corpora (300-token BPE, rows of 128)
    python benchmarks/paper_regime.py --corpus python --commit          # every run not stored yet
    python benchmarks/paper_regime.py --corpus python --commit --only teachers,end
    python benchmarks/paper_regime.py --corpus python --cooldowns --commit   # point 0's cooldown branches
    python benchmarks/paper_regime.py --corpus python --summarise-only
    python benchmarks/paper_regime.py --corpus python --step-cost       # step costs, on an otherwise idle machine

The student (4 layers x 96, 0.47M parameters) trains 4,700 steps of 16 x 128 tokens: 9.6M tokens, 20.4 per
parameter (1.59 epochs of the python corpus, 0.80 of prose). The teachers are smaller in width and depth: 3x80 (0.26M,
0.56 of the student: the paper's 1.5B / 2.8B is 0.54), 2x64 (0.12M, 0.25) and 2x44 (63k, 0.13), each trained on the
same training text for the student's token budget, a finished model as in SALT. The trained teachers are committed
under results/regime/<corpus>/stored/teachers/paper_*, which `regime_benchmark.py --prepare` restores.

Runs go `--parallel` at a time (one CPU thread each); each run's JSON is written to
benchmarks/results/paper_regime/<corpus>/runs/ as it finishes (and committed with --commit); a rerun skips stored runs.
Every student run also records, in its `train_log`, the measurements of kd_end.py: the NLL and KD terms' gradient
norms and cosine every 20 steps, AdamW's update norm, the student's and teacher's entropy at every evaluation.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import time
from functools import partial
from pathlib import Path

import bench
import kd_end
import torch
from bench import RESULTS, WORK, RunResult, RunSpec
from paper_regime_plots import plot
from regime_benchmark import commit as commit_files
from regime_benchmark import corpus_name, wallclock_at_measured_cost

ROOT = RESULTS / "paper_regime"
STUDENT, STEPS = "4x96", 4700
TEACHERS = {"half": "3x80", "quarter": "2x64", "eighth": "2x44"}
EVERY = 100  # evaluation and logging interval (47 held-out evaluations per run)
SAVE_EVERY = 470  # checkpoints at every tenth of the run, for the cooldown branches
W = 0.5
COOLDOWN = 470  # a branch's linear decay to 0: a tenth of the run
ENTROPY_ROWS = 64


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


# The end of the KD stage the suite runs with, chosen in point 0 (RESULTS.md section 8): the additive mix, whose loss
# scale does not jump where the KD stage ends (no rise after it, on both halves; today's step end rose 0.05 nats).
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


def scale_steps(model: str) -> int:
    return round(TOKENS_PER_PARAM * bench.build_model(model, 300, 128, 0).num_parameters() / (bench.BATCH * 128))


def scale_every(steps: int) -> dict:
    """The scale axis's evaluation and logging grid: 47 evaluations and 470 logs over a run of `steps`."""
    return {"eval_steps": max(1, steps // 47), "logging_steps": max(1, steps // 470)}


def scale_auto(run: str, scale: str, steps: int, seed: int = 0) -> RunSpec:
    """The automatic stop (chosen end) at one scale, on `steps` steps, evaluated on the full run's grid."""
    model = SCALES[scale][0]
    end = dict(CHOSEN_END)
    schedule = end.pop("kd_schedule", "step")
    extra = {**scale_every(scale_steps(model)), "kd_steps": "auto", **end}
    return RunSpec(run, model, steps, seed, f"scale_{scale}", W, None, schedule, "scale", extra)


def scale_runs() -> list[RunSpec]:
    """Per scale: the 1/2 teacher, the baseline, the automatic stop, and the automatic stop on the largest budget
    (its schedule fit to 0.8 of the steps, evaluated on the full run's grid): the budget form against size."""
    runs = []
    top = max(BUDGETS)
    for name, (model, teacher) in SCALES.items():
        steps = scale_steps(model)
        every = scale_every(steps)
        runs.append(RunSpec(f"teacher_scale_{name}", model=teacher, steps=steps, group="teacher", extra=every))
        runs.append(RunSpec(f"baseline_scale_{name}", model=model, steps=steps, group="scale", extra=every))
        runs.append(scale_auto(f"auto_scale_{name}", name, steps))
        runs.append(scale_auto(f"auto_scale_{name}_budget_{top}", name, round(steps * top)))
    return runs


SCALE_SEEDS = (1,)  # more seeds of the largest student, the one whose budget form reached its baseline


def scale_more_runs(corpus: str) -> list[RunSpec]:
    """The largest student further: a second seed of its baseline and automatic stop, and the next smaller budget
    once its largest budget's run reached the baseline's final test loss (known once both ran)."""
    name = list(SCALES)[-1]
    model = SCALES[name][0]
    steps = scale_steps(model)
    runs = [
        RunSpec(
            f"baseline_scale_{name}_s{s}", model=model, steps=steps, seed=s, group="scale", extra=scale_every(steps)
        )
        for s in SCALE_SEEDS
    ]
    runs += [scale_auto(f"auto_scale_{name}_s{s}", name, steps, s) for s in SCALE_SEEDS]
    top = max(BUDGETS)
    base, short = (
        runs_dir(corpus) / f"{n}.json" for n in (f"baseline_scale_{name}", f"auto_scale_{name}_budget_{top}")
    )
    if base.is_file() and short.is_file():
        if RunResult.load(short).final_test_loss <= RunResult.load(base).final_test_loss:
            b = max(x for x in BUDGETS if x < top)
            runs.append(scale_auto(f"auto_scale_{name}_budget_{b}", name, round(steps * b)))
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


def commit(paths: list, message: str) -> None:
    """Commits `paths` with the summary and figures written anew from everything stored, so they never disagree."""
    commit_files([*paths, *write_outputs()], message)


def write_outputs() -> list:
    """summary.json and each corpus's curves.png from the stored runs; their paths."""
    corpora = [c for c in OTHER if runs_dir(c).is_dir()]
    write_summary(corpora)
    return [ROOT / "summary.json", *[p for p in map(plot_corpus, corpora) if p]]


# ---- training -------------------------------------------------------------------------------------------------------


def runs_dir(corpus: str):
    return ROOT / corpus / "runs"


def train_one(spec: RunSpec, corpus: str, threads: int):
    name = corpus_name(corpus)
    if spec.group == "teacher":
        save_to = bench.teacher_dir(name, "paper_" + spec.name.removeprefix("teacher_"))
        result = bench.train_run(spec, name, "cpu", WORK / name / "paper_runs" / spec.name, save_to, threads)
        for f in stored_teacher_files(corpus, spec):  # committed, so that --prepare restores it on a fresh machine
            f.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(save_to / f.name, f)
    else:
        teacher = bench.teacher_dir(name, spec.teacher) if spec.teacher else None
        _, _, evals = bench.load_corpus(name)
        rows = evals["dev"].rows[:ENTROPY_ROWS]
        kd_end.GradientProbe.probe_every = 20
        callbacks = [kd_end.UpdateNorm(), kd_end.Entropy(rows, teacher)]
        run_dir = WORK / name / "paper_runs" / spec.name
        save_to = None if spec.extra.get("save_strategy") == "steps" else run_dir / "final"  # for the probes
        result = bench.train_run(spec, name, "cpu", run_dir, save_to, threads, callbacks, kd_end.GradientProbe)
    result.save(runs_dir(corpus) / f"{spec.name}.json")


def stored_teacher_files(corpus: str, spec: RunSpec) -> list[Path]:
    """Where a teacher run's model is kept in the repository: regime_benchmark.py's stored teachers, which its
    --prepare copies back into the work folder."""
    if spec.group != "teacher":
        return []
    folder = RESULTS / "regime" / corpus / "stored" / "teachers" / ("paper_" + spec.name.removeprefix("teacher_"))
    return [folder / f for f in ("config.json", "generation_config.json", "model.safetensors")]


def resolve_teacher(spec: RunSpec) -> RunSpec:
    """The suite names teachers half / quarter / eighth; their folders are paper_<name> beside the other suites'."""
    if spec.teacher and not spec.teacher.startswith("paper_"):
        spec.teacher = "paper_" + spec.teacher
    return spec


def named_runs(groups: dict[str, list[RunSpec]], names: list[str]) -> list[RunSpec]:
    """The runs of the named groups and the runs named one by one, in the order given."""
    every = {s.name: s for g in groups.values() for s in g}
    return [s for n in names for s in (groups[n] if n in groups else [every[n]])]


def train(args) -> None:
    groups = all_runs(args.corpus)
    specs = named_runs(groups, args.only.split(",") if args.only else list(groups))
    todo = [resolve_teacher(s) for s in specs if not (runs_dir(args.corpus) / f"{s.name}.json").is_file()]
    for i in range(0, len(todo), args.parallel):
        batch = todo[i : i + args.parallel]
        print("side by side:", ", ".join(s.name for s in batch), flush=True)
        bench.in_workers(partial(train_one, corpus=args.corpus, threads=1), batch, len(batch))
        if args.commit:
            paths = [runs_dir(args.corpus) / f"{s.name}.json" for s in batch]
            paths += [f for s in batch for f in stored_teacher_files(args.corpus, s)]
            commit(paths, f"paper regime ({args.corpus}): {', '.join(s.name for s in batch)}")


# ---- cooldown branches (point 0) ------------------------------------------------------------------------------------


CEILING_RUNS = {"half": "kd_all", "quarter": "kd_all_quarter", "eighth": "kd_all_eighth"}  # KD all run, per teacher


def branches() -> list[tuple[str, int, str]]:
    """(run, step, mode): plain = NLL only, kd = KD continued at w; off the baseline and each KD-for-the-whole-run."""
    out = []
    for step in range(SAVE_EVERY, STEPS // 2 + SAVE_EVERY + 1, SAVE_EVERY):  # 10% .. 60% of the run
        out += [("baseline_s0", step, "plain"), *((run, step, "plain") for run in CEILING_RUNS.values())]
    # KD going on through the cooldown, at two points (what an end at the LR's decay would keep)
    return out + [("kd_all", step, "kd") for step in (2 * SAVE_EVERY, 5 * SAVE_EVERY)]


def cooldown_one(branch: tuple[str, int, str], corpus: str) -> dict:
    run, step, mode = branch
    name = corpus_name(corpus)
    teacher = RunResult.load(runs_dir(corpus) / f"{run}.json").spec.teacher  # the run's own teacher, when KD goes on
    spec = student(f"{run}_{mode}", teacher=teacher, kd_ratio=1.0) if mode == "kd" else student(run, teacher=None)
    t0 = time.time()
    test, dev = kd_end.cooldown(WORK / name / "paper_runs" / run, step, STEPS, COOLDOWN, spec, name, threads=1)
    return {"run": run, "step": step, "mode": mode, "test": test, "dev": dev, "wall_s": time.time() - t0}


def cooldowns(args) -> None:
    path = ROOT / args.corpus / "cooldowns.json"
    done = json.loads(path.read_text()) if path.is_file() else []
    have = {(d["run"], d["step"], d["mode"]) for d in done}
    ready = [
        b
        for b in branches()
        if (WORK / corpus_name(args.corpus) / "paper_runs" / b[0] / f"checkpoint-{b[1]}").is_dir()
    ]
    todo = [b for b in ready if b not in have and (runs_dir(args.corpus) / f"{b[0]}.json").is_file()]
    todo = [b for b in todo if b[0] in args.only.split(",")] if args.only else todo
    mine = []
    for i in range(0, len(todo), args.parallel):
        batch = todo[i : i + args.parallel]
        print("cooldowns:", batch, flush=True)
        mine += bench.in_workers(partial(cooldown_one, corpus=args.corpus), batch, len(batch))
        # read again before writing: another invocation (--only other runs) may have stored branches meanwhile
        stored = json.loads(path.read_text()) if path.is_file() else []
        merged = {(d["run"], d["step"], d["mode"]): d for d in stored + mine}
        bench.write_json(path, sorted(merged.values(), key=lambda d: (d["step"], d["run"], d["mode"])), indent=1)
        if args.commit:
            commit([path], f"paper regime ({args.corpus}): cooldown branches {batch}")


# ---- probes of every final model: out-of-domain loss and in-context learning (point 4) ------------------------------

OTHER = {"python": "prose", "prose": "python"}
OOD_ROWS, ICL_SEQUENCES, ICL_LENGTH = 256, 128, 32


def final_model_dir(corpus: str, run: str):
    """A student run's final model: its last checkpoint (`save_steps` divides the run) or the saved `final` folder."""
    run_dir = WORK / corpus_name(corpus) / "paper_runs" / run
    last = run_dir / f"checkpoint-{STEPS}"
    return last if last.is_dir() else run_dir / "final"


def ood_rows(corpus: str) -> torch.Tensor:
    """The OTHER corpus's held-out documents in this corpus's tokenizer, packed into rows of the suite's length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(WORK / corpus_name(corpus) / "tokenizer")
    ids = []
    for path in sorted((WORK / corpus_name(OTHER[corpus]) / "heldout").glob("*.txt")):
        ids += tokenizer(path.read_text(encoding="utf-8"))["input_ids"] + [tokenizer.eos_token_id or 0]
    seq = json.loads((WORK / corpus_name(corpus) / "info.json").read_text())["seq_length"]
    usable = len(ids) // seq * seq
    return torch.tensor(ids[:usable]).view(-1, seq)[:OOD_ROWS]


def mean_loss(model, rows: torch.Tensor, batch: int = 32) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch):
            x = rows[i : i + batch]
            logits = model(input_ids=x).logits[:, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="sum"))
            count += x[:, 1:].numel()
    return total / count


def probe_one(run: str, corpus: str) -> dict:
    from transformers import AutoModelForCausalLM

    from salt_hf.icl_probe import icl_probe

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(final_model_dir(corpus, run)).eval()
    vocab = json.loads((WORK / corpus_name(corpus) / "info.json").read_text())["vocab"]
    icl = icl_probe(model, vocab, sequences=ICL_SEQUENCES, length=ICL_LENGTH, seed=0)
    return {
        "run": run,
        "ood_test_loss": mean_loss(model, ood_rows(corpus)),
        **{f"icl_{k}": v for k, v in icl.to_dict().items()},
    }


def probes(args) -> None:
    """Fills results/paper_regime/<corpus>/probes.json for every stored student run whose final model is on disk."""
    path = ROOT / args.corpus / "probes.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    runs = [p.stem for p in sorted(runs_dir(args.corpus).glob("*.json")) if not p.stem.startswith("teacher_")]
    todo = [r for r in runs if r not in done and final_model_dir(args.corpus, r).is_dir()]
    for row in bench.in_workers(partial(probe_one, corpus=args.corpus), todo, max(1, min(args.parallel, len(todo)))):
        done[row.pop("run")] = row
    bench.write_json(path, dict(sorted(done.items())), indent=1)
    if args.commit and todo:
        commit([path], f"paper regime ({args.corpus}): probes of {', '.join(todo)}")


# ---- step costs for wall-clock-to-target (point 5) ------------------------------------------------------------------

STEP_COST = ROOT / "step_cost.json"  # written by --step-cost


def cost_pairs() -> dict[str, tuple[str, str]]:
    """The (student, teacher) pairs whose step costs the summary needs: the main student with each teacher, and the
    scale axis's pairs."""
    pairs = {t: (STUDENT, size) for t, size in TEACHERS.items()}
    return pairs | {f"scale_{n}": pair for n, pair in SCALES.items()}


def measure_step_costs() -> None:
    """Each pair with the suite's rows (16 x 128 tokens, 300-token vocabulary): bench.measure_step_costs."""
    bench.measure_step_costs(cost_pairs(), STEP_COST, vocab=300, seq=128)


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
    path = ROOT / corpus / "probes.json"
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
        sizes[n] = (runs.get(f"baseline_scale_{n}"), runs.get(f"auto_scale_{n}"), runs.get(f"teacher_scale_{n}"))
        sizes[n] += (f"scale_{n}", {b: runs.get(f"auto_scale_{n}_budget_{b}") for b in BUDGETS})
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
    pairs = [(auto0, base0)] + [
        (runs[f"auto_scale_{scale}_s{s}"], runs[f"baseline_scale_{scale}_s{s}"])
        for s in SCALE_SEEDS
        if f"auto_scale_{scale}_s{s}" in runs and f"baseline_scale_{scale}_s{s}" in runs
    ]
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
    path = ROOT / corpus / "curves.png"
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
    path = ROOT / corpus / "cooldowns.json"
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


# ---- entry point ----------------------------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=("python", "prose"), required=True)
    parser.add_argument("--only", default=None, help="comma-separated groups or run names")
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side, one thread each")
    parser.add_argument("--commit", action="store_true", help="git-commit each batch's stored runs as they finish")
    parser.add_argument("--cooldowns", action="store_true", help="train point 0's cooldown branches")
    parser.add_argument("--probes", action="store_true", help="probe the stored runs' final models (point 4)")
    parser.add_argument("--end-report", action="store_true", help="write point 0's report (end.json) and print it")
    parser.add_argument("--summarise-only", action="store_true", help="train nothing: summarise the stored runs")
    parser.add_argument("--step-cost", action="store_true", help="measure the step costs (an otherwise idle machine)")
    return parser.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    if args.step_cost:
        measure_step_costs()
    elif args.cooldowns:
        cooldowns(args)
    elif args.probes:
        probes(args)
    elif args.end_report:
        report = end_report(args.corpus)
        bench.write_json(ROOT / args.corpus / "end.json", report, indent=1)
        print_end_report(report)
    elif not args.summarise_only:
        train(args)
    print(f"done: {time.time() - t0:.0f}s", flush=True)
    write_outputs()
    for p in sorted(runs_dir(args.corpus).glob("*.json")):
        r = RunResult.load(p)
        print(f"{r.spec.name}: final test {r.final_test_loss:.4f} dev {r.final_dev_loss:.4f} kd_steps {r.kd_steps}")


if __name__ == "__main__":
    main()
