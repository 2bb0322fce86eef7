"""Does SALT pay off? Teacher, baseline, SALT schedules, a weight x n_KD grid, KD-for-the-whole-run (negative
control), a second teacher size and shortened budgets, on one prepared corpus (benchmarks/prepare_corpora.py).

    python benchmarks/salt_benchmark.py --corpus python --device cuda --workers 7
    python benchmarks/salt_benchmark.py --corpus prose --device cpu --workers 1 --steps 600    # slow on 2 cores

Every run is a SALTTrainer run (the baseline is SALTTrainer without a teacher, which trains exactly like Trainer)
with the same data order for the same seed. Validation rows (documents no run trains on) are split in two halves:
`dev` picks the best setting, `test` gives every number reported, so nothing is tuned on the reported text.
Writes benchmarks/results/<corpus>/runs/*.json (raw) and benchmarks/results/<corpus>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK, RESULTS = HERE / "work", HERE / "results"

# One place for the benchmark's recipe (the RESEARCH.md probe's regime: seq 128, batch 16, AdamW 2e-3 cosine).
BATCH, LR, WARMUP, WEIGHT_DECAY, EVAL_ROWS = 16, 2e-3, 50, 0.01, 256
STUDENT, TEACHERS = "5m", {"1m": 2.0, "3m": 2.0}  # teacher size -> its steps as a multiple of the student's
DEFAULT = dict(kd_weight=0.5, kd_ratio=0.2, kd_schedule="step", teacher="1m")
# The best setting by the dev half on both corpora (grid of section 2 in RESULTS.md, seed 0): its seeds 1 and 2
BEST = dict(DEFAULT, kd_weight=0.75, kd_ratio=0.4)
# the groups whose seed-0 full-budget runs compete for "best setting" (by dev loss)
SETTING_GROUPS = ("default", "schedule", "grid", "teacher_size")


@dataclass
class RunSpec:
    name: str
    model: str = STUDENT
    steps: int = 1500
    seed: int = 0
    teacher: str | None = None  # teacher size name, or None for plain training
    kd_weight: float = 0.0
    kd_ratio: float | None = None
    kd_schedule: str = "step"
    group: str = ""
    extra: dict = field(default_factory=dict)


def suite(steps: int) -> tuple[list[RunSpec], list[RunSpec]]:
    teachers = [
        RunSpec(f"teacher_{size}", model=size, steps=int(steps * mult), group="teacher")
        for size, mult in TEACHERS.items()
    ]
    s = []
    for seed in (0, 1, 2):
        s.append(RunSpec(f"baseline_s{seed}", steps=steps, seed=seed, group="baseline"))
        s.append(RunSpec(f"salt_default_s{seed}", steps=steps, seed=seed, group="default", **DEFAULT))
    for sched in ("linear_decay", "linear_ratio_decay"):
        s.append(RunSpec(f"salt_{sched}", steps=steps, group="schedule", **{**DEFAULT, "kd_schedule": sched}))
    for w in (0.25, 0.5, 0.75):
        for r in (0.1, 0.2, 0.4):
            if (w, r) != (DEFAULT["kd_weight"], DEFAULT["kd_ratio"]):
                s.append(
                    RunSpec(f"salt_w{w}_r{r}", steps=steps, group="grid", **{**DEFAULT, "kd_weight": w, "kd_ratio": r})
                )
    s.append(RunSpec("rkd_whole_run", steps=steps, group="negative_control", **{**DEFAULT, "kd_ratio": 1.0}))
    s.append(RunSpec("salt_teacher_3m", steps=steps, group="teacher_size", **{**DEFAULT, "teacher": "3m"}))
    for seed in (1, 2):  # seed 0 of the best setting is its grid row
        s.append(RunSpec(f"salt_w0.75_r0.4_s{seed}", steps=steps, seed=seed, group="best_seeds", **BEST))
    for frac in (0.6, 0.7, 0.8):
        s.append(RunSpec(f"salt_budget_{frac}", steps=int(steps * frac), group="budget", **DEFAULT))
    for frac in (0.5, 0.6, 0.7):
        s.append(RunSpec(f"salt_best_budget_{frac}", steps=int(steps * frac), group="budget", **BEST))
    # the best setting with w falling linearly over its KD stage: does the rebound at n_KD go away? (RESULTS.md sec. 3)
    s.append(
        RunSpec(
            "salt_best_linear_decay", steps=steps, group="best_schedule", **{**BEST, "kd_schedule": "linear_decay"}
        )
    )
    # SALT_DS: the default recipe with the KD stage drawn from the teacher's top-scored sequences
    for frac, seeds in ((0.5, (0, 1, 2)), (0.25, (0,)), (0.75, (0,))):
        for seed in seeds:
            extra = {"kd_data_selection": True, "kd_select_fraction": frac}
            s.append(RunSpec(f"salt_ds_f{frac}_s{seed}", steps=steps, seed=seed, group="salt_ds", extra=extra,
                             **DEFAULT))  # fmt: skip
    # SALT_DS with the best setting's recipe, to compare against that setting's own runs
    extra = {"kd_data_selection": True, "kd_select_fraction": 0.75}
    s.append(RunSpec("salt_ds_best_f0.75_s0", steps=steps, group="salt_ds", extra=extra, **BEST))
    return teachers, s


# ---- one run (in a worker process) ------------------------------------------------------------------------------


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self):
        return self.rows.shape[0]

    def __getitem__(self, i):
        ids = self.rows[i].long()
        return {"input_ids": ids, "labels": ids}


def build_model(size: str, vocab: int, seq: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from salt_hf.cli.train import MODEL_SIZES

    torch.manual_seed(seed)
    sizes = MODEL_SIZES[size]
    cfg = LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=seq,
        tie_word_embeddings=True,
        num_key_value_heads=sizes["num_attention_heads"],
        bos_token_id=0,
        eos_token_id=0,
        **sizes,
    )
    return LlamaForCausalLM(cfg)


def step_timer(device: str):
    """A callback recording the wall-clock of every optimizer step, training only (evaluation excluded)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t0 = [], None

        def on_step_begin(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t0)

    return StepTimer()


def recipe_args(spec: RunSpec, device: str, output_dir: Path, **overrides):
    """The benchmark's SALTConfig for one run: the recipe above, the run's SALT fields, then `spec.extra`."""
    from salt_hf import SALTConfig

    n_evals = 15
    fields = dict(
        output_dir=str(output_dir),
        max_steps=spec.steps,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=64,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP,
        weight_decay=WEIGHT_DECAY,
        eval_strategy="steps",
        eval_steps=max(1, spec.steps // n_evals),
        logging_steps=max(1, spec.steps // n_evals),
        save_strategy="no",
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=device == "cpu",
        disable_tqdm=True,
        dataloader_num_workers=0,
        kd_weight=spec.kd_weight if spec.teacher else 0.0,
        kd_ratio=spec.kd_ratio,
        kd_schedule=spec.kd_schedule,
    )
    return SALTConfig(**{**fields, **spec.extra, **overrides})


def train_one(
    spec: RunSpec,
    corpus: str,
    device: str,
    results: Path = RESULTS,
    save_model: bool = False,
    threads: int | None = None,
) -> dict:

    from salt_hf import SALTTrainer

    if threads:  # side by side on CPU: each of the two concurrent runs gets its own share of the cores
        torch.set_num_threads(threads)
    work = WORK / corpus
    info = json.loads((work / "info.json").read_text())
    train_rows = torch.load(work / "train.pt")
    val = torch.load(work / "validation.pt")[: 2 * EVAL_ROWS]
    evals = {"dev": Rows(val[0::2]), "test": Rows(val[1::2])}
    out_dir = work / "runs" / spec.name
    if spec.extra.get("kd_data_selection"):  # one score cache per corpus, shared by the SALT_DS runs
        spec.extra.setdefault("kd_select_cache_dir", str(work / "scores"))
    teacher_dir = work / "teachers" / spec.teacher if spec.teacher else None

    args = recipe_args(spec, device, out_dir)
    model = build_model(spec.model, info["vocab"], info["seq_length"], spec.seed)
    timer = step_timer(device)
    trainer = SALTTrainer(
        model=model,
        teacher_model=str(teacher_dir) if teacher_dir else None,
        args=args,
        train_dataset=Rows(train_rows),
        eval_dataset=evals,
        callbacks=[timer],
    )
    t0 = time.time()
    scoring_s = 0.0
    if args.kd_data_selection:  # SALT_DS: score (or read the cached scores) first, timed apart from training
        trainer.prepare_kd_selection()
        scoring_s = time.time() - t0
    trainer.train()
    wall = time.time() - t0
    if spec.group == "teacher":
        trainer.save_model(str(work / "teachers" / spec.model))
    elif save_model:  # kept for the downstream check (benchmarks/downstream_eval.py)
        trainer.save_model(str(out_dir / "final"))
    # the two eval sets are logged as two entries per evaluation step
    by_step: dict[int, dict] = {}
    for h in trainer.state.log_history:
        by_step.setdefault(h["step"], {}).update(h)
    curve = [
        (step, h["eval_test_loss"], h["eval_dev_loss"])
        for step, h in sorted(by_step.items())
        if "eval_test_loss" in h and "eval_dev_loss" in h
    ]
    kd_steps = trainer.kd_steps if spec.teacher else 0
    result = {
        "spec": asdict(spec),
        "corpus": corpus,
        "device": device,
        "params": sum(p.numel() for p in model.parameters()),
        "kd_steps": kd_steps,
        "curve_step_test_dev": curve,
        "final_test_loss": curve[-1][1],
        "final_dev_loss": curve[-1][2],
        "train_wall_s": wall,
        "scoring_s": scoring_s,
        "selection": (trainer._kd_selection or {}).get("summary"),
        "step_times_s": timer.times,
        "median_kd_step_s": statistics.median(timer.times[:kd_steps]) if kd_steps else None,
        "median_plain_step_s": statistics.median(timer.times[kd_steps:]) if kd_steps < len(timer.times) else None,
        "train_log": [h for h in trainer.state.log_history if "loss" in h],
    }
    path = results / corpus / "runs" / f"{spec.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    print(f"{spec.name}: test {result['final_test_loss']:.4f} wall {wall:.0f}s", flush=True)
    return result


# ---- analysis ------------------------------------------------------------------------------------------------------


def first_step_at_or_below(curve, target: float, col: int = 1):
    return next((row[0] for row in curve if row[col] <= target), None)


def first_step_staying_at_or_below(curve, target: float, col: int = 1):
    """The evaluation step from which every later evaluation is at or below `target` (None if the last is not)."""
    step = None
    for row in reversed(curve):
        if row[col] > target:
            break
        step = row[0]
    return step


def time_to_step(result: dict, step: int | None) -> float | None:
    """Training time up to `step`, plus SALT_DS's scoring before training (the selection's cost)."""
    return None if step is None else result.get("scoring_s", 0.0) + sum(result["step_times_s"][:step])


def kd_switch(result: dict) -> dict | None:
    """The rebound check: logged gradient norm and test loss at the end of the KD stage and one evaluation later."""
    k, steps = result["kd_steps"], result["spec"]["steps"]
    grad = {h["step"]: float(h["grad_norm"]) for h in result["train_log"] if "grad_norm" in h}
    test = {row[0]: row[1] for row in result["curve_step_test_dev"]}
    after = min((step for step in test if step > k), default=None)
    if not 0 < k < steps or k not in grad or k not in test or after not in grad:
        return None
    return {
        "step": k,
        "next": after,
        "grad_norm_ratio": grad[after] / grad[k],
        "test_loss_change": test[after] - test[k],
    }


def ratio_stats(values):
    vals = [v for v in values if v is not None]
    return {
        "mean": statistics.mean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
        "seeds": values,
    }


def seed_runs(name: str, rows: dict) -> list[str]:
    """The seed-0 run `name` and its seeds 1 and 2, by the suite's naming (`x_s0`/`x_s1`, or `x` then `x_s1`)."""
    stem = name[: -len("_s0")] if name.endswith("_s0") else name
    return [name] + [f"{stem}_s{s}" for s in (1, 2) if f"{stem}_s{s}" in rows]


def summarise(corpus: str, results: dict[str, dict], steps: int, baselines: dict[str, dict] | None = None) -> dict:
    """Per-run rows and the suite's headline numbers.

    Each run is measured against its own seed's baseline: steps-to-target against that baseline's final test loss,
    wall-clock-to-target against a baseline's whole training time on the same device (the same seed's when it ran
    there, else seed 0's). `baselines` supplies baseline runs missing from `results` (e.g. GPU baselines for a part
    of the suite rerun on CPU); each row says which baseline it used.
    """
    pool = {**(baselines or {}), **{k: v for k, v in results.items() if k.startswith("baseline_s")}}
    base = {s: pool[f"baseline_s{s}"] for s in (0, 1, 2) if f"baseline_s{s}" in pool}
    rows = {}
    for name, r in results.items():
        if r["spec"]["group"] == "teacher":
            rows[name] = {"final_test_loss": r["final_test_loss"], "params": r["params"], "steps": r["spec"]["steps"]}
            continue
        b = base.get(r["spec"]["seed"])
        if b is None:
            continue
        same_device = [x for x in (b, *base.values()) if x["device"] == r["device"]]
        target = b["final_test_loss"]
        reach = first_step_at_or_below(r["curve_step_test_dev"], target)
        t_reach = time_to_step(r, reach)
        # the loss can rise again when KD switches off: also report from when it stays at or below the target
        stay = first_step_staying_at_or_below(r["curve_step_test_dev"], target)
        t_stay = time_to_step(r, stay)
        base_time = sum(same_device[0]["step_times_s"]) if same_device else None
        rows[name] = {
            "group": r["spec"]["group"],
            "seed": r["spec"]["seed"],
            "device": r["device"],
            "final_test_loss": r["final_test_loss"],
            "final_dev_loss": r["final_dev_loss"],
            "baseline_final_test_loss": target,
            "baseline_device": b["device"],
            "steps": r["spec"]["steps"],
            "kd_steps": r["kd_steps"],
            "steps_to_target_ratio": reach / b["spec"]["steps"] if reach is not None else None,
            "steps_to_stay_at_target_ratio": stay / b["spec"]["steps"] if stay is not None else None,
            "wallclock_to_target_ratio": t_reach / base_time if t_reach is not None and base_time else None,
            "wallclock_to_stay_at_target_ratio": t_stay / base_time if t_stay is not None and base_time else None,
            "wallclock_baseline": f"baseline_s{same_device[0]['spec']['seed']}" if same_device else None,
            "median_kd_step_s": r["median_kd_step_s"],
            "median_plain_step_s": r["median_plain_step_s"],
            "budget_reaches_target": r["final_test_loss"] <= target,
            "kd_switch": kd_switch(r),
        }
    summary = {
        "corpus": corpus,
        "steps": steps,
        "baseline_final_test_loss": ratio_stats([base[s]["final_test_loss"] for s in sorted(base)]),
        "runs": rows,
    }

    def seeds_block(names):
        return {
            "runs": names,
            "steps_to_target_ratio": ratio_stats([rows[n]["steps_to_target_ratio"] for n in names]),
            "wallclock_to_target_ratio": ratio_stats([rows[n]["wallclock_to_target_ratio"] for n in names]),
            "steps_to_stay_at_target_ratio": ratio_stats([rows[n]["steps_to_stay_at_target_ratio"] for n in names]),
            "wallclock_to_stay_at_target_ratio": ratio_stats(
                [rows[n]["wallclock_to_stay_at_target_ratio"] for n in names]
            ),
            "final_test_loss": ratio_stats([rows[n]["final_test_loss"] for n in names]),
            "baseline_final_test_loss": ratio_stats([rows[n]["baseline_final_test_loss"] for n in names]),
        }

    # best setting: lowest final DEV loss among seed-0 SALT settings on the full budget (never the test half)
    candidates = {
        n: r for n, r in rows.items() if r.get("group") in SETTING_GROUPS and r["seed"] == 0 and r["steps"] == steps
    }
    if candidates:
        best = min(candidates, key=lambda n: candidates[n]["final_dev_loss"])
        spec = results[best]["spec"]
        setting = {k: spec[k] for k in ("kd_weight", "kd_ratio", "kd_schedule", "teacher")}
        summary["best_setting_by_dev"] = {"run": best, "setting": setting, **seeds_block(seed_runs(best, rows))}
    if "salt_default_s0" in rows:
        summary["default_setting"] = {"spec": results["salt_default_s0"]["spec"], **seeds_block(
            seed_runs("salt_default_s0", rows))}  # fmt: skip
    ds = [f"salt_ds_f0.5_s{s}" for s in (0, 1, 2) if f"salt_ds_f0.5_s{s}" in rows]
    if ds:
        summary["salt_ds_f0.5"] = seeds_block(ds)
    return summary


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
            "default_setting": {
                k: s["default_setting"][k] for k in ("steps_to_target_ratio", "wallclock_to_target_ratio")
            }
            if "default_setting" in s
            else None,  # fmt: skip
            "device": s.get("device"),
            "source": str(path.relative_to(RESULTS)),
        }
    for v in top.values():
        v.pop("_n")
    (RESULTS / "summary.json").write_text(json.dumps(top, indent=2) + "\n")
    return top


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


def plot(corpus: str, results: dict[str, dict], path: Path) -> None:
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
        curve = results[name]["curve_step_test_dev"]
        ax.plot([c[0] for c in curve], [c[1] for c in curve], style, marker="o", markersize=3, label=name)
    ax.axhline(results["baseline_s0"]["final_test_loss"], color="grey", lw=0.8, ls=":")
    ax.set_ylim(top=min(8.0, max(c[1] for c in results["baseline_s0"]["curve_step_test_dev"][1:]) + 0.3))
    ax.set(xlabel="optimizer step", ylabel="held-out test loss (nats/token)", title=f"{corpus}: SALT vs baseline")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma-separated run names (a part of the suite)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where runs/ and summary.json go, per corpus")
    parser.add_argument(
        "--baselines-from", type=Path, default=None, help="results folder whose baseline runs fill in missing seeds"
    )
    parser.add_argument("--save-models", action="store_true", help="save each student (for downstream_eval.py)")
    parser.add_argument("--summarise-only", action="store_true", help="train nothing: summarise the stored runs")
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="time each seed's runs against its baseline run at the same time (one process each, the cores split "
        "between them) so that machine drift hits all alike; --only names, per seed, its baseline and the other runs",
    )
    args = parser.parse_args()
    res_dir = args.results.resolve()
    t0 = time.time()
    teachers, students = suite(args.steps)
    if args.only or args.summarise_only:
        keep = set(args.only.split(",")) if args.only and not args.summarise_only else set()
        teachers, students = [r for r in teachers if r.name in keep], [r for r in students if r.name in keep]

    def run_args(n, threads=None):
        return [args.corpus] * n, [args.device] * n, [res_dir] * n, [args.save_models] * n, [threads] * n

    results = {}
    if args.side_by_side:
        groups = side_by_side_groups(teachers, students)
        args.workers = max(len(g) for g in groups)
        for group in groups:  # one seed at a time: its runs start together and share the machine
            threads = max(1, (os.cpu_count() or 2) // len(group)) if args.device == "cpu" else None
            print("side by side:", ", ".join(s.name for s in group), flush=True)
            with ProcessPoolExecutor(len(group), mp_context=torch.multiprocessing.get_context("spawn")) as pool:
                for spec, res in zip(group, pool.map(train_one, group, *run_args(len(group), threads)), strict=True):
                    results[spec.name] = res
        teachers, students = [], []
    with ProcessPoolExecutor(args.workers, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
        for spec, res in zip(
            teachers,
            pool.map(train_one, teachers, *run_args(len(teachers))),
            strict=True,
        ):
            results[spec.name] = res
        for spec, res in zip(
            students,
            pool.map(train_one, students, *run_args(len(students))),
            strict=True,
        ):
            results[spec.name] = res
    if args.only or args.summarise_only:  # summarise with the runs stored earlier (same corpus and steps)
        stored = {p.stem: json.loads(p.read_text()) for p in (res_dir / args.corpus / "runs").glob("*.json")}
        results = {**{k: v for k, v in stored.items() if v["spec"]["steps"] in (args.steps,) or
                      v["spec"]["group"] in ("teacher", "budget")}, **results}  # fmt: skip
    baselines = None
    if args.baselines_from:  # a part of the suite rerun elsewhere: the baselines it lacks come from a full suite
        src = args.baselines_from.resolve() / args.corpus / "runs"
        baselines = {p.stem: json.loads(p.read_text()) for p in src.glob("baseline_s*.json")}
        # seeds of the full suite's best setting rerun here: its seed-0 run (and the choice) come from the full suite
        full = src.parent / "summary.json"
        best = json.loads(full.read_text()).get("best_setting_by_dev", {}).get("run") if full.is_file() else None
        if (
            best
            and best not in results
            and (src / f"{best}.json").is_file()
            and not any(r["spec"]["group"] in SETTING_GROUPS for r in results.values())
        ):
            results[best] = json.loads((src / f"{best}.json").read_text())
    summary = summarise(args.corpus, results, args.steps, baselines)
    out = res_dir / args.corpus
    previous = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    if args.summarise_only:  # keep the figures of the invocation that trained
        summary.update({k: previous[k] for k in ("suite_wall_s", "device", "workers", "timing") if k in previous})
    else:
        summary.update(suite_wall_s=time.time() - t0, device=args.device, workers=args.workers)
        summary["timing"] = "side_by_side" if args.side_by_side else "sequential" if args.workers == 1 else "shared"
    summary["runs_train_wall_s"] = sum(r.get("train_wall_s", 0.0) for r in results.values())
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(args.corpus, results, out / "curves.png")
    top = write_top_summary()
    print(json.dumps({"best_setting_by_dev": summary.get("best_setting_by_dev"), "summary.json": top}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
