"""Do the speed-ups of salt_hf.speedups and the Trainer pay off, alone and stacked with SALT? (issue 7)

    python benchmarks/speedups_benchmark.py --corpus python --device cuda --workers 8
    python benchmarks/speedups_benchmark.py --corpus python --device cpu --steps 20 --seeds 0 --only baseline,wsd_salt

Each technique runs alone and with SALT's default recipe: a WSD schedule, cosine with a floor, sequence-length
warmup, layer-wise learning rates, unfused AdamW against the default fused one, Adafactor, schedule-free AdamW. Same
seeds and data order as the plain baseline, which is salt_benchmark.py's recipe (AdamW 2e-3, cosine, 50 warm-up
steps, batch 16, sequence 128, 5M student). Reported against the plain baseline of the same seed: steps and
wall-clock (training only) to reach its final test loss, and the final test loss. The teacher is salt_benchmark.py's
1M teacher (trained here first if missing). Writes benchmarks/results/<corpus>/speedups/runs/*.json and
benchmarks/results/<corpus>/speedups/summary.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from salt_benchmark import (  # noqa: E402
    DEFAULT,
    EVAL_ROWS,
    RESULTS,
    STUDENT,
    TEACHERS,
    WORK,
    Rows,
    RunSpec,
    build_model,
    first_step_at_or_below,
    recipe_args,
    step_timer,
    time_to_step,
)
from salt_benchmark import train_one as train_salt_benchmark_run  # noqa: E402

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


# ---- one run (in a worker process) ----------------------------------------------------------------------------------


def train_one(spec: RunSpec, corpus: str, device: str) -> dict:

    from salt_hf import SALTTrainer

    work = WORK / corpus
    info = json.loads((work / "info.json").read_text())
    val = torch.load(work / "validation.pt")[: 2 * EVAL_ROWS]
    evals = {"dev": Rows(val[0::2]), "test": Rows(val[1::2])}
    teacher_dir = work / "teachers" / spec.teacher if spec.teacher else None

    fields = {"lr_scheduler_type": "cosine", **spec.extra}  # salt_benchmark.py's recipe, then the technique
    args = recipe_args(spec, device, work / "speedups_runs" / spec.name)
    model = build_model(spec.model, info["vocab"], info["seq_length"], spec.seed)
    timer = step_timer(device)
    trainer = SALTTrainer(model=model, teacher_model=str(teacher_dir) if teacher_dir else None, args=args,
                          train_dataset=Rows(torch.load(work / "train.pt")), eval_dataset=evals,
                          callbacks=[timer])  # fmt: skip
    t0 = time.time()
    trainer.train()
    wall = time.time() - t0
    by_step: dict[int, dict] = {}  # the two eval sets are logged as two entries per evaluation step
    for h in trainer.state.log_history:
        by_step.setdefault(h["step"], {}).update(h)
    curve = [(step, h["eval_test_loss"], h["eval_dev_loss"]) for step, h in sorted(by_step.items())
             if "eval_test_loss" in h and "eval_dev_loss" in h]  # fmt: skip
    result = {
        "spec": {
            "name": spec.name,
            "group": spec.group,
            "seed": spec.seed,
            "steps": spec.steps,
            "salt": spec.teacher is not None,
            "fields": fields,
        },
        "corpus": corpus,
        "device": device,
        "kd_steps": trainer.kd_steps if spec.teacher else 0,
        "curve_step_test_dev": curve,
        "final_test_loss": curve[-1][1],
        "final_dev_loss": curve[-1][2],
        "train_wall_s": wall,
        "step_times_s": timer.times,
        "median_step_s": statistics.median(timer.times),
        "train_log": [h for h in trainer.state.log_history if "loss" in h],
    }
    path = RESULTS / corpus / "speedups" / "runs" / f"{spec.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    print(f"{spec.name}: test {result['final_test_loss']:.4f} wall {wall:.0f}s", flush=True)
    return result


# ---- analysis -------------------------------------------------------------------------------------------------------


def summarise(corpus: str, results: dict[str, dict], steps: int, seeds: list[int]) -> dict:
    def stats(values):
        vals = [v for v in values if v is not None]
        return {"mean": statistics.mean(vals) if vals else None,
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
                "reached": f"{len(vals)}/{len(values)}", "seeds": values}  # fmt: skip

    rows = {}
    for technique in TECHNIQUES:
        for salt in (False, True):
            variant = f"{technique}{'_salt' if salt else ''}"
            per_seed = {"steps_to_target_ratio": [], "wallclock_to_target_ratio": [], "final_test_loss": [],
                        "median_step_s": []}  # fmt: skip
            for seed in seeds:
                run, base = results.get(f"{variant}_s{seed}"), results.get(f"baseline_s{seed}")
                if run is None or base is None:
                    continue
                target = base["final_test_loss"]  # the plain baseline's final loss, same seed
                reach = first_step_at_or_below(run["curve_step_test_dev"], target)
                t_reach = time_to_step(run, reach)
                per_seed["steps_to_target_ratio"].append(reach / base["spec"]["steps"] if reach is not None else None)
                per_seed["wallclock_to_target_ratio"].append(
                    t_reach / sum(base["step_times_s"]) if t_reach is not None else None
                )
                per_seed["final_test_loss"].append(run["final_test_loss"])
                per_seed["median_step_s"].append(run["median_step_s"])
            if per_seed["final_test_loss"]:
                rows[variant] = {key: stats(values) for key, values in per_seed.items()}
    return {"corpus": corpus, "steps": steps, "seeds": seeds, "variants": rows}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; every variant runs each")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma-separated variants, e.g. baseline,wsd_salt (debugging)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    runs = suite(args.steps, seeds)
    if args.only:
        keep = set(args.only.split(","))
        runs = [r for r in runs if r.name.rsplit("_s", 1)[0] in keep]
    ctx = torch.multiprocessing.get_context("spawn")
    teacher = RunSpec(f"teacher_{DEFAULT['teacher']}", model=DEFAULT["teacher"],
                      steps=int(args.steps * TEACHERS[DEFAULT["teacher"]]), group="teacher")  # fmt: skip
    if any(r.teacher for r in runs) and not (WORK / args.corpus / "teachers" / DEFAULT["teacher"]).is_dir():
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:  # salt_benchmark.py's teacher, saved where it reads it
            pool.submit(train_salt_benchmark_run, teacher, args.corpus, args.device).result()
    results = {}
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        done = pool.map(train_one, runs, [args.corpus] * len(runs), [args.device] * len(runs))
        for spec, res in zip(runs, done, strict=True):
            results[spec.name] = res
    # runs stored by earlier invocations of the same corpus and length fill in what --only left out
    stored = {p.stem: json.loads(p.read_text()) for p in (RESULTS / args.corpus / "speedups" / "runs").glob("*.json")}
    results = {**{k: v for k, v in stored.items() if v["spec"]["steps"] == args.steps}, **results}
    summary = summarise(args.corpus, results, args.steps, seeds)
    summary.update(suite_wall_s=time.time() - t0, device=args.device, workers=args.workers, student=STUDENT)
    out = RESULTS / args.corpus / "speedups" / "summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    for variant, row in summary["variants"].items():
        print(f"{variant:22s} steps-to-target {row['steps_to_target_ratio']['mean']}  "
              f"wall-to-target {row['wallclock_to_target_ratio']['mean']}  "
              f"final test {row['final_test_loss']['mean']:.4f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
