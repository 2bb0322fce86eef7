"""Do the speed-ups of salt_hf.speedups and the Trainer pay off, alone and stacked with SALT? (issue 7)

    python benchmarks/speedups/speedups_benchmark.py --corpus python --device cuda --workers 8
    python benchmarks/speedups/speedups_benchmark.py --corpus python --device cpu --steps 20 --seeds 0 \
        --only baseline,wsd_salt
    python benchmarks/speedups/speedups_benchmark.py --corpus python --seeds 0 --summarise-only

Each technique runs alone and with SALT's default recipe: a WSD schedule, cosine with a floor, sequence-length
warmup, layer-wise learning rates, unfused AdamW against the default fused one, Adafactor, schedule-free AdamW. Same
seeds and data order as the plain baseline, which is salt_benchmark.py's recipe (bench.py: AdamW 2e-3, cosine, 50
warm-up steps, batch 16, sequence 128, 5M student). Reported against the plain baseline of the same seed: steps and
wall-clock (training only) to reach its final test loss, and the final test loss. The teacher is salt_benchmark.py's
1M teacher (trained here first if missing). Writes <results>/<corpus>/speedups/runs/*.json and, from them,
<results>/<corpus>/speedups/summary.json (<results>: benchmarks/results unless --results says otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402
import torch  # noqa: E402
from bench import DEFAULT, RESULTS, WORK, RunResult, RunSpec  # noqa: E402

# Each technique as the SALTConfig fields it changes; the baseline is salt_benchmark.py's recipe. Fractions of the run
# (decay, warmup) are resolved against --steps in `technique_fields`.
TECHNIQUES: dict[str, dict] = {
    "baseline": {},
    # WSD with the last 20% decaying as 1 - sqrt (Hägele et al., 2024: 10-20% cool-down matches cosine)
    "wsd": {"lr_scheduler_type": "warmup_stable_decay", "decay_fraction": 0.2, "decay_type": "1-sqrt"},
    # cosine to a floor of 10% of the peak instead of 0
    "cosine_floor": {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
    # rows of 32 then 64 tokens over the first 20% of the steps (128 = 32 * 2**2: two doublings)
    "seq_warmup": {"seq_warmup_fraction": 0.2, "seq_warmup_schedule": "doubling", "seq_warmup_start_length": 32},
    # each of the 4 layers below the head at 0.9x the rate of the one above (embeddings at 0.9**5 = 0.59x)
    "layerwise": {"layerwise_lr_decay": 0.9, "layerwise_lr_direction": "top_down"},
    # optimizers: the baseline's AdamW is the Trainer's default, fused (torch >= 2.8); unfused measures the gain
    "adamw_unfused": {"optim": "adamw_torch"},
    "adafactor": {"optim": "adafactor"},
    # schedule-free AdamW does its own warmup (warmup_steps) and needs no decay: constant schedule
    "schedule_free": {"optim": "schedule_free_adamw", "lr_scheduler_type": "constant"},
}
VARIANTS = [f"{technique}{'_salt' if salt else ''}" for technique in TECHNIQUES for salt in (False, True)]


def technique_fields(name: str, steps: int) -> dict:
    fields = dict(TECHNIQUES[name])
    if "decay_fraction" in fields:
        decay = max(1, round(fields.pop("decay_fraction") * steps))
        fields["lr_scheduler_kwargs"] = {"num_decay_steps": decay, "decay_type": fields.pop("decay_type")}
    if "seq_warmup_fraction" in fields:
        fields["seq_warmup_steps"] = max(1, round(fields.pop("seq_warmup_fraction") * steps))
    return fields


def suite(steps: int, seeds: list[int]) -> list[RunSpec]:
    runs = []
    for technique in TECHNIQUES:
        for salt in (False, True):
            for seed in seeds:
                name = f"{technique}{'_salt' if salt else ''}_s{seed}"
                kd = DEFAULT if salt else {}
                extra = technique_fields(technique, steps)
                runs.append(RunSpec(name, steps=steps, seed=seed, group=technique, extra=extra, **kd))
    return runs


# ---- training: every run writes <results>/<corpus>/speedups/runs/<name>.json ------------------------------------


def record(r: RunResult) -> dict:
    """This suite's run JSON: the technique's fields instead of the full spec, the median of every step."""
    spec = {"name": r.spec.name, "group": r.spec.group, "seed": r.spec.seed, "steps": r.spec.steps}
    spec.update(salt=r.spec.teacher is not None, fields={"lr_scheduler_type": "cosine", **r.spec.extra})
    return {
        "spec": spec,
        "corpus": r.corpus,
        "device": r.device,
        "kd_steps": r.kd_steps,
        "curve_step_test_dev": r.curve_step_test_dev,
        "final_test_loss": r.final_test_loss,
        "final_dev_loss": r.final_dev_loss,
        "train_wall_s": r.train_wall_s,
        "step_times_s": r.step_times_s,
        "median_step_s": statistics.median(r.step_times_s),
        "train_log": r.train_log,
    }


def train_one(spec: RunSpec, corpus: str, device: str, runs: Path) -> None:
    if spec.group == "teacher":  # salt_benchmark.py's teacher, saved where the SALT runs load it
        save_to = bench.teacher_dir(corpus, spec.model)
        result = bench.train_run(spec, corpus, device, WORK / corpus / "runs" / spec.name, save_to)
        result.save(runs.parent / f"{spec.name}.json")  # beside the summary: runs/ holds this suite's runs only
        return
    result = bench.train_run(spec, corpus, device, WORK / corpus / "speedups_runs" / spec.name)
    bench.write_json(runs / f"{spec.name}.json", record(result))


# ---- summary: over the stored runs -------------------------------------------------------------------------------


def summarise(corpus: str, results: dict[str, dict], steps: int, seeds: list[int]) -> dict:
    """Per variant, over the seeds: steps and wall-clock to the plain baseline's final test loss (same seed), the
    final test loss and the median step time."""
    rows = {}
    for variant in VARIANTS:
        per_seed = {
            k: [] for k in ("steps_to_target_ratio", "wallclock_to_target_ratio", "final_test_loss", "median_step_s")
        }
        for seed in seeds:
            run, base = results.get(f"{variant}_s{seed}"), results.get(f"baseline_s{seed}")
            if run is None or base is None:
                continue
            target = base["final_test_loss"]
            reach = bench.first_step_at_or_below(run["curve_step_test_dev"], target)
            per_seed["steps_to_target_ratio"].append(reach / base["spec"]["steps"] if reach is not None else None)
            t_reach = sum(run["step_times_s"][:reach]) if reach is not None else None
            per_seed["wallclock_to_target_ratio"].append(
                t_reach / sum(base["step_times_s"]) if t_reach is not None else None
            )
            per_seed["final_test_loss"].append(run["final_test_loss"])
            per_seed["median_step_s"].append(run["median_step_s"])
        if per_seed["final_test_loss"]:
            rows[variant] = {key: bench.seed_stats(values, reached=True) for key, values in per_seed.items()}
    return {"corpus": corpus, "steps": steps, "seeds": seeds, "variants": rows}


def write_summary(args, seeds: list[int], runs: Path, figures: dict) -> None:
    # runs stored by earlier invocations of the same corpus and length fill in what --only left out
    stored = {p.stem: json.loads(p.read_text()) for p in runs.glob("*.json")}
    if not stored:
        raise SystemExit(f"no stored runs in {runs}: nothing to summarise")
    results = {k: v for k, v in stored.items() if v["spec"]["steps"] == args.steps}
    summary = summarise(args.corpus, results, args.steps, seeds)
    out = runs.parent / "summary.json"
    summary.update(bench.invocation_figures(out, figures, args.summarise_only))
    bench.write_json(out, summary, indent=2)
    for variant, row in summary["variants"].items():
        steps, wall = row["steps_to_target_ratio"]["mean"], row["wallclock_to_target_ratio"]["mean"]
        final = row["final_test_loss"]["mean"]
        print(f"{variant:22s} steps-to-target {steps}  wall-to-target {wall}  final test {final:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; every variant runs each")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma-separated variants, e.g. baseline,wsd_salt (debugging)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where speedups/ goes, per corpus")
    parser.add_argument("--summarise-only", action="store_true", help="train nothing: summarise the stored runs")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs_dir = args.results.resolve() / args.corpus / "speedups" / "runs"
    t0 = time.time()
    runs = suite(args.steps, seeds)
    if args.only:
        keep = set(args.only.split(","))
        runs = [r for r in runs if r.name.rsplit("_s", 1)[0] in keep]
    figures = dict.fromkeys(("suite_wall_s", "device", "workers", "student"))
    if not args.summarise_only:
        one = partial(train_one, corpus=args.corpus, device=args.device, runs=runs_dir)
        if any(r.teacher for r in runs) and not bench.teacher_dir(args.corpus, DEFAULT["teacher"]).is_dir():
            bench.in_workers(one, [bench.teacher_run(DEFAULT["teacher"], args.steps)], 1)
        bench.in_workers(one, runs, args.workers)
        figures = dict(suite_wall_s=time.time() - t0, device=args.device, workers=args.workers, student=bench.STUDENT)
    write_summary(args, seeds, runs_dir, figures)


if __name__ == "__main__":
    main()
