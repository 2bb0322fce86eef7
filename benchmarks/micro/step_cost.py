"""Step time and peak memory of SALT's KD step (logits and fused-linear loss) against a plain Trainer step.

    python benchmarks/micro/step_cost.py            # CPU fp32, issue 15's table -> results/step_cost_fused.json
    python benchmarks/micro/step_cost.py --vocabs 8192 --tokens 512 --student 2x64 --teacher 1x32 --steps 1  # smoke
    python benchmarks/micro/step_cost.py --device cuda --dtype bf16 --out results/step_cost_fused_gpu.json
    python benchmarks/micro/step_cost.py --summarise-only --out results/step_cost.json  # a stored table
    python benchmarks/micro/step_cost.py --profile --vocabs 151936 --tokens 1024   # where a step's time goes (top ops)

Every step is the real thing, `training_step` and the optimizer step: `Trainer` (the model's own loss) and
`SALTTrainer` with `loss_implementation="logits"` (the chunked loss on both models' logits) and `"fused_linear"`
(the loss from the last hidden states and output weights, never a [tokens x vocab] tensor; issue 15), in the KD stage
(w = 0.5, with the teacher's forward) and in the plain stage after it (w = 0, NLL only). Beside them the teacher's
forward alone. They run interleaved in one process so drift hits all alike. Peak memory: on CUDA the allocator's
peak of one step above what was allocated before it (weights, optimizer state); on CPU each variant runs in a fresh
process and we report its peak resident set during one step above the resident set just before it (the weights and
optimizer state), and above the resident set before any model existed.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402, F401  (puts every study folder on sys.path)
import torch  # noqa: E402
from bench import RESULTS, build_model, sync, write_json  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from salt_hf import SALTConfig, SALTTrainer  # noqa: E402

# Sizes from issue 15: a student 8 layers x 512 wide and a teacher 4 x 256, whose output layers are a large share of
# their cost at these vocabularies; rows of 256 tokens (--seq; --tokens sets how many rows make a step).
STUDENT, TEACHER, SEQ = "8x512", "4x256", 256
# The trainers timed; "teacher_fwd" (the teacher's forward alone) is timed beside them.
KINDS = ("plain", "kd_logits", "kd_fused", "plain_fused")


def make_trainer(kind: str, vocab: int, rows: int, cli) -> Trainer:
    """A trainer of `kind` ready to step: Trainer, or SALTTrainer in the KD stage / the plain stage, with its loss."""
    common = dict(
        output_dir="/tmp/salt_step_cost",
        report_to="none",
        use_cpu=cli.device == "cpu",
        bf16=cli.dtype == "bf16",
        per_device_train_batch_size=rows,
        max_steps=10**6,
        optim="adamw_torch",
        disable_tqdm=True,
    )
    student = build_model(cli.student, vocab, cli.seq, 0)
    if kind == "plain":
        trainer = Trainer(model=student, args=TrainingArguments(**common))
    else:
        kd = kind.startswith("kd")
        implementation = "fused_linear" if kind.endswith("fused") else "logits"
        salt = dict(kd_weight=0.5, kd_steps=10**6) if kd else dict(kd_weight=0.0)
        args = SALTConfig(**common, **salt, kd_compile=cli.compile, loss_implementation=implementation)
        teacher = build_model(cli.teacher, vocab, cli.seq, 1) if kd else None
        trainer = SALTTrainer(model=student, teacher_model=teacher, args=args)
    # prepare() puts the model on its device and, for bf16, wraps its forward in autocast as train() would
    trainer.model = trainer.accelerator.prepare(trainer.model.to(trainer.args.device))
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    if isinstance(trainer, SALTTrainer) and trainer.teacher is not None:  # what train() does before its first step
        trainer.resolve_kd_steps(10**6)
        trainer.place_teacher()
    return trainer


def batch(vocab: int, rows: int, seq: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows, seq), generator=g).to(device)
    return {"input_ids": ids, "labels": ids.clone()}


def step(trainer, inputs) -> None:
    n = (inputs["labels"][:, 1:] != -100).sum()
    trainer.training_step(trainer.model, inputs, n)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def measure(variants: dict, device: str, steps: int) -> tuple[dict, dict]:
    """Median time per variant (interleaved, after two warm-up rounds) and, on CUDA, each one's peak memory (MiB)."""
    times, peaks = {k: [] for k in variants}, {}
    for _ in range(2):  # warm-up (the fused path's first step also checks its logits against the model's own)
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


def ratios(med: dict) -> dict:
    """The issue's targets: KD step / (plain step + teacher forward), plain-stage step / plain step."""
    plain_and_teacher = med["plain"] + med["teacher_fwd"]
    return {
        "kd_logits_over_plain_plus_teacher": med["kd_logits"] / plain_and_teacher,
        "kd_fused_over_plain_plus_teacher": med["kd_fused"] / plain_and_teacher,
        "plain_fused_over_plain": med["plain_fused"] / med["plain"],
        "teacher_forward_over_plain": med["teacher_fwd"] / med["plain"],
    }


def time_all(vocab: int, tokens: int, cli) -> dict:
    rows = tokens // cli.seq
    trainers = {kind: make_trainer(kind, vocab, rows, cli) for kind in KINDS}
    inputs = batch(vocab, rows, cli.seq, trainers["plain"].args.device)
    kd = trainers["kd_logits"]

    def teacher_forward():
        with torch.no_grad(), kd.accelerator.autocast():
            return kd.teacher_model(input_ids=inputs["input_ids"]).logits

    variants = {kind: (lambda t=trainer: step(t, inputs)) for kind, trainer in trainers.items()}
    variants["teacher_fwd"] = teacher_forward
    med, peaks = measure(variants, cli.device, cli.steps)
    row = {
        "vocab": vocab,
        "tokens": tokens,
        "device": cli.device,
        "dtype": cli.dtype,
        "student": cli.student,
        "teacher": cli.teacher,
        "seq": cli.seq,
        "threads": torch.get_num_threads(),
        "kd_compile": cli.compile,
        "steps": cli.steps,
        "student_params": sum(p.numel() for p in trainers["plain"].model.parameters()),
        "teacher_params": sum(p.numel() for p in kd.teacher_model.parameters()),
        **{f"{k}_step_s": med[k] for k in KINDS},
        "teacher_forward_s": med["teacher_fwd"],
        **ratios(med),
        "loss_implementations": {k: t.fused_head.implementation for k, t in trainers.items() if k != "plain"},
    }
    if peaks:
        row.update({f"transient_mib_{k}": peaks[k] for k in KINDS})
    return row


def profile(vocab: int, tokens: int, cli, top: int = 15) -> str:
    """torch.profiler over one step of each kind (after a warm-up step): the operators by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    rows = tokens // cli.seq
    trainers = {kind: make_trainer(kind, vocab, rows, cli) for kind in KINDS}
    inputs = batch(vocab, rows, cli.seq, trainers["plain"].args.device)
    report = []
    for kind, trainer in trainers.items():
        step(trainer, inputs)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step(trainer, inputs)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
        report.append(f"## {kind}: vocab {vocab}, {tokens} tokens\n\n{table}")
    return "\n".join(report)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def cpu_peak_child(vocab: int, tokens: int, kind: str, cli) -> dict:
    """
    Runs in a fresh process whose malloc returns freed memory at once (MALLOC_MMAP_THRESHOLD_ / TRIM_THRESHOLD_,
    set by the parent), so the resident set follows live tensors. After two warm-up steps (the optimizer state then
    exists), the peak resident set of one step (reset through /proc/self/clear_refs): above the resident set just
    before that step (`transient`: the step's activations, logits and gradients) and above the resident set before
    any model existed (`peak_above_base`: weights and AdamW state too).
    """
    inputs = batch(vocab, tokens // cli.seq, cli.seq, "cpu")
    gc.collect()
    base = _status_mib("VmRSS")
    trainer = make_trainer(kind, vocab, tokens // cli.seq, cli)
    for _ in range(2):
        step(trainer, inputs)
    gc.collect()
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set
    step(trainer, inputs)
    peak = _status_mib("VmHWM")
    return {"kind": kind, "transient_mib": peak - before, "peak_above_base_mib": peak - base}


def cpu_peaks(vocab: int, tokens: int, cli) -> dict:
    """Each trainer's peak memory on CPU, measured in a fresh process (cpu_peak_child)."""
    out = {}
    for kind in KINDS:
        cmd = [sys.executable, __file__, "--_child", str(vocab), str(tokens), kind, "--student", cli.student]
        cmd += ["--teacher", cli.teacher, "--seq", str(cli.seq), "--threads", str(torch.get_num_threads())]
        cmd += ["--compile"] if cli.compile else []
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        child = json.loads(done.stdout.strip().splitlines()[-1])
        out[f"transient_mib_{kind}"] = child["transient_mib"]
        out[f"peak_mib_{kind}"] = child["peak_above_base_mib"]
    return out


def with_memory_ratios(row: dict) -> dict:
    """The issue's memory target: the KD step's transient memory against the plain Trainer step's."""
    plain = row["transient_mib_plain"]
    for kind in KINDS[1:]:
        row[f"{kind}_transient_over_plain"] = row[f"transient_mib_{kind}"] / plain
    return row


def print_issue2_table(rows: list[dict]) -> None:
    """The table of a results file written before issue 15 (`results/step_cost.json`: one KD step, on logits)."""
    print("| vocab | plain step s | teacher fwd s | KD step s | KD / (plain + teacher) | KD peak / plain peak |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["plain_step_s"], r["teacher_forward_s"], r["kd_step_s"], r["kd_over_plain_plus_teacher"]]
        cells.append(r["kd_peak_over_plain_peak"])
        print(f"| {r['vocab']} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


def print_table(rows: list[dict]) -> None:
    if rows and "kd_step_s" in rows[0]:
        return print_issue2_table(rows)
    print(
        "| vocab | tokens | plain s | teacher fwd s | KD logits s | KD fused s | plain stage fused s "
        "| KD logits / (plain + teacher) | KD fused / (plain + teacher) | plain fused / plain "
        "| KD logits mem / plain | KD fused mem / plain | plain fused mem / plain |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["plain_step_s"], r["teacher_forward_s"]] + [r[f"{k}_step_s"] for k in KINDS[1:]]
        cells += [r["kd_logits_over_plain_plus_teacher"], r["kd_fused_over_plain_plus_teacher"]]
        cells += [r["plain_fused_over_plain"]] + [r.get(f"{k}_transient_over_plain", float("nan")) for k in KINDS[1:]]
        print(f"| {r['vocab']} | {r['tokens']} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--vocabs", default="32768,49152,128256,151936")
    parser.add_argument("--tokens", default="1024,4096", help="tokens per step, multiples of --seq")
    parser.add_argument("--seq", type=int, default=SEQ, help="tokens per row")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="times only: skip the CPU peak-memory processes")
    parser.add_argument("--memory-only", action="store_true", help="CPU peak memory only, no timing")
    parser.add_argument("--student", default=STUDENT, help="<layers>x<width> or a salt_hf.models size")
    parser.add_argument("--teacher", default=TEACHER, help="<layers>x<width> or a salt_hf.models size")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "step_cost_fused.json"))
    parser.add_argument("--compile", action="store_true", help="SALTConfig(kd_compile=True) for the logits path")
    parser.add_argument("--summarise-only", action="store_true", help="measure nothing: print the table of --out")
    parser.add_argument("--profile", action="store_true", help="profile one step of each kind at the first sizes")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.threads:
        torch.set_num_threads(cli.threads)
    if cli._child:
        vocab, tokens, kind = cli._child
        print(json.dumps(cpu_peak_child(int(vocab), int(tokens), kind, cli)))
        return
    if cli.summarise_only:
        print_table(json.loads(Path(cli.out).read_text()))
        return
    if cli.profile:
        print(profile(int(cli.vocabs.split(",")[0]), int(cli.tokens.split(",")[0]), cli))
        return
    rows = []
    for vocab in [int(v) for v in cli.vocabs.split(",")]:
        for tokens in [int(t) for t in cli.tokens.split(",")]:
            t0 = time.time()
            row = {"vocab": vocab, "tokens": tokens, "student": cli.student, "teacher": cli.teacher}
            row = row if cli.memory_only else time_all(vocab, tokens, cli)
            if cli.device == "cpu" and not cli.no_memory:
                row.update(cpu_peaks(vocab, tokens, cli))
            if "transient_mib_plain" in row:
                row = with_memory_ratios(row)
            row["wall_s"] = time.time() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_json(Path(cli.out), rows, indent=2)
    if not cli.memory_only:
        print_table(rows)


if __name__ == "__main__":
    main()
