"""Step time and peak memory of a SALT (KD) step against a plain Trainer step and the teacher's forward alone.

    python benchmarks/step_cost.py                      # CPU fp32, vocab 8k and 32k, writes results/step_cost.json
    python benchmarks/step_cost.py --device cuda --dtype bf16 --out results/step_cost_gpu.json
    python benchmarks/step_cost.py --summarise-only     # the table of the stored results/step_cost.json

Both steps are the real thing: `Trainer.training_step` (the model's own loss) and `SALTTrainer.training_step` (fused
chunked NLL + KD with the teacher's forward), each followed by the optimizer step. They run interleaved in one process
so drift hits both alike. Peak memory: on CUDA the allocator's peak; on CPU each variant runs in a fresh process and
we report its peak resident set above the resident set of a process that has imported everything and built the data.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench import DEFAULT, RESULTS, STUDENT, build_model, sync, write_json
from transformers import Trainer, TrainingArguments

from salt_hf import SALTConfig, SALTTrainer

# Sizes from the issue: ~5M-parameter student, ~1M teacher (at vocab 8k), seq 256, batch 16.
TEACHER, SEQ, BATCH = DEFAULT["teacher"], 256, 16


def make_trainers(vocab: int, device: str, dtype: str, which: str, compile_kd: bool):
    """The plain and/or the KD trainer, ready to step, and the KD trainer's teacher (None without it)."""
    common = dict(
        output_dir="/tmp/salt_step_cost",
        report_to="none",
        use_cpu=device == "cpu",
        bf16=dtype == "bf16",
        per_device_train_batch_size=BATCH,
        max_steps=10**6,
        optim="adamw_torch",
        disable_tqdm=True,
    )
    out, teacher = {}, None
    if which in ("plain", "all"):
        out["plain"] = Trainer(model=build_model(STUDENT, vocab, SEQ, 0), args=TrainingArguments(**common))
    if which in ("kd", "all"):
        args = SALTConfig(**common, kd_weight=0.5, kd_steps=10**6, kd_compile=compile_kd)
        student = build_model(STUDENT, vocab, SEQ, 0)
        out["kd"] = SALTTrainer(model=student, teacher_model=build_model(TEACHER, vocab, SEQ, 1), args=args)
    for trainer in out.values():
        # prepare() puts the model on its device and, for bf16, wraps its forward in autocast as train() would
        trainer.model = trainer.accelerator.prepare(trainer.model.to(trainer.args.device))
        trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
        if isinstance(trainer, SALTTrainer):  # what train() does before its first KD step
            trainer.resolve_kd_steps(10**6)
            teacher = trainer.teacher.place(trainer.accelerator, trainer.args)
    return out, teacher


def batch(vocab: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=g).to(device)
    return {"input_ids": ids, "labels": ids.clone()}


def step(trainer, inputs) -> None:
    n = (inputs["labels"][:, 1:] != -100).sum()
    trainer.training_step(trainer.model, inputs, n)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def measure(variants: dict, device: str, steps: int) -> tuple[dict, dict]:
    """Median time per variant (interleaved, after two warm-up rounds) and, on CUDA, each one's peak memory (MiB)."""
    times, peaks = {k: [] for k in variants}, {}
    for _ in range(2):  # warm-up
        for fn in variants.values():
            fn()
    for name, fn in variants.items():  # CUDA peak memory, one variant at a time
        if device == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            sync(device)
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    for _ in range(steps):  # interleaved timing
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, peaks


def time_all(vocab: int, device: str, dtype: str, steps: int, compile_kd: bool) -> dict:
    trainers, teacher = make_trainers(vocab, device, dtype, "all", compile_kd)
    inputs = batch(vocab, trainers["plain"].args.device)

    def teacher_forward():
        with torch.no_grad(), trainers["kd"].accelerator.autocast():
            return teacher(input_ids=inputs["input_ids"]).logits

    variants = {
        "plain": lambda: step(trainers["plain"], inputs),
        "teacher_fwd": teacher_forward,
        "kd": lambda: step(trainers["kd"], inputs),
    }
    med, peaks = measure(variants, device, steps)
    row = {
        "vocab": vocab,
        "device": device,
        "dtype": dtype,
        "kd_compile": compile_kd,
        "steps": steps,
        "student_params": sum(p.numel() for p in trainers["plain"].model.parameters()),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "plain_step_s": med["plain"],
        "teacher_forward_s": med["teacher_fwd"],
        "kd_step_s": med["kd"],
        "kd_over_plain": med["kd"] / med["plain"],
        "kd_over_plain_plus_teacher": med["kd"] / (med["plain"] + med["teacher_fwd"]),
        "teacher_forward_over_plain": med["teacher_fwd"] / med["plain"],
    }
    if peaks:
        row.update({f"peak_mib_{k}": v for k, v in peaks.items()})
        row["kd_peak_over_plain_peak"] = peaks["kd"] / peaks["plain"]
    return row


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def cpu_peak_child(vocab: int, which: str, compile_kd: bool) -> dict:
    """
    Runs in a fresh process whose malloc returns freed memory at once (MALLOC_MMAP_THRESHOLD_ / TRIM_THRESHOLD_,
    set by the parent), so the resident set follows live tensors. The peak resident set of one step (reset through
    /proc/self/clear_refs after two warm-up steps) minus the resident set before any model existed: parameters,
    gradients, optimizer state and the step's activations and logits.
    """
    inputs = batch(vocab, "cpu")
    gc.collect()
    base = _status_mib("VmRSS")
    trainers, _ = make_trainers(vocab, "cpu", "fp32", which, compile_kd)
    for _ in range(2):
        step(trainers[which], inputs)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set
    step(trainers[which], inputs)
    return {"which": which, "peak_above_base_mib": _status_mib("VmHWM") - base}


def cpu_peaks(vocab: int, compile_kd: bool) -> dict:
    """Each variant's peak memory on CPU, measured in a fresh process (cpu_peak_child)."""
    peaks = {}
    for which in ("plain", "kd"):
        cmd = [sys.executable, __file__, "--_child", str(vocab), which] + (["--compile"] if compile_kd else [])
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        peaks[f"peak_mib_{which}"] = json.loads(out.stdout.strip().splitlines()[-1])["peak_above_base_mib"]
    return {**peaks, "kd_peak_over_plain_peak": peaks["peak_mib_kd"] / peaks["peak_mib_plain"]}


def print_table(rows: list[dict]) -> None:
    print("| vocab | plain step s | teacher fwd s | KD step s | KD / (plain + teacher) | KD peak / plain peak |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["plain_step_s"], r["teacher_forward_s"], r["kd_step_s"], r["kd_over_plain_plus_teacher"]]
        cells.append(r["kd_peak_over_plain_peak"])
        print(f"| {r['vocab']} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--vocabs", default="8192,32768")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "step_cost.json"))
    parser.add_argument("--compile", action="store_true", help="SALTConfig(kd_compile=True) for the KD step")
    parser.add_argument("--summarise-only", action="store_true", help="measure nothing: print the table of --out")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(cpu_peak_child(int(args._child[0]), args._child[1], args.compile)))
        return
    if args.summarise_only:
        print_table(json.loads(Path(args.out).read_text()))
        return
    rows = []
    for vocab in [int(v) for v in args.vocabs.split(",")]:
        t0 = time.time()
        row = time_all(vocab, args.device, args.dtype, args.steps, args.compile)
        if args.device == "cpu":
            row.update(cpu_peaks(vocab, args.compile))
        row["wall_s"] = time.time() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_json(Path(args.out), rows, indent=2)
    print_table(rows)


if __name__ == "__main__":
    main()
