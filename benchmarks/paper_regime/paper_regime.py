"""SALT where the paper measured it: a teacher about half the student's size, ~20 tokens per parameter (issue 24).

    python benchmarks/regime/regime_benchmark.py --prepare   # the corpora (300-token BPE, rows of 128)
    python benchmarks/paper_regime/paper_regime.py --corpus python --commit          # every run not stored yet
    python benchmarks/paper_regime/paper_regime.py --corpus python --commit --only teachers,end
    python benchmarks/paper_regime/paper_regime.py --corpus python --cooldowns --commit   # point 0's cooldown branches
    python benchmarks/paper_regime/paper_regime.py --corpus python --summarise-only
    python benchmarks/paper_regime/paper_regime.py --corpus python --step-cost  # step costs, idle machine

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
import shutil
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402
import kd_end  # noqa: E402
import torch  # noqa: E402
from bench import RESULTS, WORK, RunResult, RunSpec  # noqa: E402
from paper_regime_runs import (  # noqa: E402
    CEILING_RUNS,
    OTHER,
    SAVE_EVERY,
    STEP_COST,
    STEPS,
    all_runs,
    corpus_dir,
    cost_pairs,
    runs_dir,
    student,
)
from paper_regime_summary import end_report, print_end_report, write_outputs  # noqa: E402
from regime_benchmark import commit as commit_files  # noqa: E402
from regime_benchmark import corpus_name  # noqa: E402

COOLDOWN = 470  # a branch's linear decay to 0: a tenth of the run
ENTROPY_ROWS = 64


def commit(paths: list, message: str) -> None:
    """Commits `paths` with the summary and figures written anew from everything stored, so they never disagree."""
    commit_files([*paths, *write_outputs()], message)


# ---- training -------------------------------------------------------------------------------------------------------


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
    path = corpus_dir(args.corpus) / "cooldowns.json"
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
    path = corpus_dir(args.corpus) / "probes.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    runs = [p.stem for p in sorted(runs_dir(args.corpus).glob("*.json")) if not p.stem.startswith("teacher_")]
    todo = [r for r in runs if r not in done and final_model_dir(args.corpus, r).is_dir()]
    for row in bench.in_workers(partial(probe_one, corpus=args.corpus), todo, max(1, min(args.parallel, len(todo)))):
        done[row.pop("run")] = row
    bench.write_json(path, dict(sorted(done.items())), indent=1)
    if args.commit and todo:
        commit([path], f"paper regime ({args.corpus}): probes of {', '.join(todo)}")


# ---- step costs for wall-clock-to-target (point 5) ------------------------------------------------------------------


def measure_step_costs() -> None:
    """Each pair with the suite's rows (16 x 128 tokens, 300-token vocabulary): bench.measure_step_costs."""
    bench.measure_step_costs(cost_pairs(), STEP_COST, vocab=300, seq=128)


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
        bench.write_json(corpus_dir(args.corpus) / "end.json", report, indent=1)
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
