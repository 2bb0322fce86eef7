"""Stored teacher targets on the paper-regime pair: the teacher run once, its targets read by SALT runs.

    python benchmarks/regime/regime_benchmark.py --prepare                          # the corpora (once)
    python benchmarks/teacher_targets/paper_pair.py --precompute             # the stores (sampled and top-K, K 16)
    python benchmarks/teacher_targets/paper_pair.py --train --seeds 0 --commit   # SALT reading each store
    python benchmarks/teacher_targets/paper_pair.py --summarise-only

The pair and recipe are the paper-regime suite's (paper_regime/paper_regime.py, python corpus): the 0.47M student
(4x96) with the half-size teacher (3x80, 0.26M), 4,700 steps of 16 x 128 tokens, the automatic stop with the additive
end, w 0.5. The online-teacher runs of the same seeds are that suite's stored runs (auto_additive_s0, auto_s1), and its
baseline_s0 is the target. Each stored-target run's JSON goes to results/teacher_targets/runs/ as it finishes; the
precompute's wall-clock, tokens/s and bytes per token to results/teacher_targets/precompute.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# the shared benchmark helpers (bench.py, the paper-regime suite) live in the parent folder
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench  # noqa: E402
import torch  # noqa: E402
from bench import RESULTS, WORK, RunResult  # noqa: E402
from paper_regime_runs import STEPS, auto, runs_dir  # noqa: E402
from regime_benchmark import corpus_name  # noqa: E402

CORPUS, TEACHER = "python", "paper_half"
K = 16  # ids per token: Anshumann et al. found a few dozen enough at 100k+ vocabularies; ours has 300 tokens
FORMS = ("sampled", "topk")
ONLINE = {0: "auto_additive_s0", 1: "auto_s1", 2: "auto_s2"}  # the paper-regime suite's online runs, by seed
OUT = RESULTS / "teacher_targets"


def store_dir(form: str, k: int = K) -> Path:
    return WORK / corpus_name(CORPUS) / "targets" / f"{form}_k{k}"


def precompute(forms=FORMS, k: int = K) -> list[dict]:
    """Writes each form's store over the corpus's training rows, one thread; returns what each cost."""
    from precompute_cost import cost_row
    from transformers import AutoTokenizer

    from salt_hf.targets import TargetStore, store_targets

    torch.set_num_threads(1)
    name = corpus_name(CORPUS)
    _, train_rows, _ = bench.load_corpus(name)
    teacher = str(bench.teacher_dir(name, TEACHER))  # by its folder: the runs name it so (its hash is compared)
    tokenizer = AutoTokenizer.from_pretrained(WORK / name / "tokenizer")
    out = []
    for form in forms:
        t0 = time.perf_counter()
        store_targets(
            teacher,
            train_rows,
            store_dir(form, k),
            form=form,
            k=k,
            tokenizer=tokenizer,
            batch_size=16,
            rows_per_shard=2048,
            device="cpu",
        )
        out.append({**cost_row(TargetStore(store_dir(form, k)), time.perf_counter() - t0), "threads": 1})
        print(json.dumps(out[-1]), flush=True)
    return out


def stored_spec(form: str, seed: int, k: int = K):
    spec = auto(f"stored_{form}_k{k}_s{seed}", seed=seed)
    spec.teacher = TEACHER  # named for the fingerprint check; never loaded
    spec.group = "stored"
    spec.extra["teacher_targets"] = str(store_dir(form, k))
    return spec


def train_one(spec) -> None:
    run_dir = WORK / corpus_name(CORPUS) / "target_runs" / spec.name
    bench.train_run(spec, corpus_name(CORPUS), "cpu", run_dir, threads=1).save(OUT / "runs" / f"{spec.name}.json")


def commit(paths: list[Path], message: str) -> None:
    subprocess.run(["git", "add", *map(str, paths)], check=True, cwd=RESULTS.parent.parent)
    subprocess.run(
        ["git", "commit", "-q", "-m", message, "--", *map(str, paths)], check=False, cwd=RESULTS.parent.parent
    )


# ---- summary ------------------------------------------------------------------------------------------------------


def reach(curve, target: float) -> int | None:
    return bench.first_step_at_or_below(curve, target)


def step_costs() -> dict:
    """A KD step in plain steps, by arm, and the precompute of each form's whole store in plain steps, from the costs
    measured apart: step_cost.py on this pair (interleaved in one process) and precompute_cost.py (vocab 300, K)."""
    step = json.loads((OUT / "step_cost_paper_pair.json").read_text())[0]
    pre = json.loads((OUT / "precompute_cost.json").read_text())
    info = json.loads((WORK / corpus_name(CORPUS) / "info.json").read_text())
    tokens = info["train_rows"] * info["seq_length"]
    by_form = {r["form"]: r for r in pre["rows"] if r["vocab"] == 300 and r["k"] == K}
    return {
        "kd_step": {
            "online": step["kd_fused_over_plain"],
            **{form: step[f"kd_stored_{form}_over_plain"] for form in FORMS},
        },
        "precompute_steps": {
            form: tokens / by_form[form]["tokens_per_s"] / pre["paper_pair_plain_step_s"] for form in FORMS
        },
    }


def summarise() -> dict:
    """Final test losses side by side, steps- and wall-clock-to-target (from the step costs measured apart), the
    precompute counted once and amortised over the runs that share the store."""
    paper = runs_dir(CORPUS)
    base = RunResult.load(paper / "baseline_s0.json")
    target = base.final_test_loss
    costs = step_costs()
    runs = {p.stem: RunResult.load(p) for p in sorted((OUT / "runs").glob("*.json"))}
    sharing = {form: sum(1 for name in runs if name.startswith(f"stored_{form}_")) for form in FORMS}
    rows = []
    for seed, online_name in ONLINE.items():
        online = RunResult.load(paper / f"{online_name}.json") if (paper / f"{online_name}.json").is_file() else None
        arms = {"online": online, **{form: runs.get(f"stored_{form}_k{K}_s{seed}") for form in FORMS}}
        if all(arms[form] is None for form in FORMS):
            continue
        for arm, r in arms.items():
            if r is None:
                continue
            step = reach(r.curve_step_test_dev, target)
            c = costs["kd_step"][arm]
            plain_steps = None if step is None else min(step, r.kd_steps) * c + max(0, step - r.kd_steps)
            pre = costs["precompute_steps"].get(arm, 0.0)
            rows.append(
                {
                    "seed": seed,
                    "arm": arm,
                    "run": r.spec.name,
                    "final_test_loss": r.final_test_loss,
                    "gain_over_baseline": target - r.final_test_loss,
                    "kd_end_step": r.kd_steps,
                    "kd_step_in_plain_steps": c,
                    "steps_to_target": None if step is None else step / STEPS,
                    "wallclock_to_target": None if step is None else plain_steps / STEPS,
                    "wallclock_to_target_precompute_once": None if step is None else (plain_steps + pre) / STEPS,
                    "wallclock_to_target_precompute_shared": (
                        None if step is None else (plain_steps + pre / max(1, sharing.get(arm, 1))) / STEPS
                    ),
                    "runs_sharing_the_store": sharing.get(arm, 0),
                }
            )
    summary = {"target": {"run": "baseline_s0", "final_test_loss": target}, "costs": costs, "rows": rows}
    bench.write_json(OUT / "summary.json", summary, indent=1)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precompute", action="store_true", help="write the stores (both forms)")
    parser.add_argument("--train", action="store_true", help="train the stored-target runs of --seeds")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--commit", action="store_true", help="git-commit each run's JSON as it finishes")
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args()
    forms = args.forms.split(",")
    if args.precompute:
        costs = precompute(forms)
        bench.write_json(OUT / "precompute.json", costs, indent=1)
        if args.commit:
            commit([OUT / "precompute.json"], "teacher targets (paper pair): the stores' precompute costs")
    if args.train:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for form in forms:
                spec = stored_spec(form, seed)
                path = OUT / "runs" / f"{spec.name}.json"
                if path.is_file():
                    continue
                train_one(spec)
                if args.commit:
                    commit([path], f"teacher targets (paper pair): {spec.name}")
    print(json.dumps(summarise(), indent=1))


if __name__ == "__main__":
    main()
