"""Step time and peak memory of a SALT (KD) step against a plain Trainer step and the teacher's forward alone.

    python benchmarks/step_cost.py                      # CPU fp32, vocab 8k and 32k, writes results/step_cost.json
    python benchmarks/step_cost.py --device cuda --dtype bf16 --out results/step_cost_gpu.json

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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

from salt_hf import SALTConfig, SALTTrainer  # noqa: E402

# Sizes from the issue: ~5M-parameter student, ~1M teacher (at vocab 8k), seq 256, batch 16.
STUDENT = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4)
TEACHER = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
SEQ, BATCH = 256, 16
COMPILE = os.environ.get("SALT_KD_COMPILE", "0") == "1"  # set by --compile (read in the memory children too)


def build(vocab: int, sizes: dict, seed: int, dtype) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=SEQ, tie_word_embeddings=True,
                      num_key_value_heads=sizes["num_attention_heads"], **sizes)  # fmt: skip
    return LlamaForCausalLM(cfg).to(dtype)


def make_trainers(vocab: int, device: str, dtype, which: str):
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
    out = {}
    if which in ("plain", "all"):
        out["plain"] = Trainer(model=build(vocab, STUDENT, 0, torch.float32), args=TrainingArguments(**common))
    if which in ("kd", "all"):
        teacher = build(vocab, TEACHER, 1, torch.float32)
        args = SALTConfig(**common, kd_weight=0.5, kd_steps=10**6, kd_compile=COMPILE)
        out["kd"] = SALTTrainer(model=build(vocab, STUDENT, 0, torch.float32), teacher_model=teacher, args=args)
    for trainer in out.values():
        # prepare() puts the model on its device and, for bf16, wraps its forward in autocast as train() would
        trainer.model = trainer.accelerator.prepare(trainer.model.to(trainer.args.device))
        trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
        if isinstance(trainer, SALTTrainer):
            trainer._resolve_kd_steps(10**6)
            trainer._ensure_teacher()
    return out


def batch(vocab: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=g).to(device)
    return {"input_ids": ids, "labels": ids.clone()}


def step(trainer, inputs) -> None:
    n = (inputs["labels"][:, 1:] != -100).sum()
    trainer.training_step(trainer.model, inputs, n)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_all(vocab: int, device: str, dtype: str, steps: int) -> dict:
    trainers = make_trainers(vocab, device, dtype, "all")
    inputs = batch(vocab, trainers["plain"].args.device)
    teacher = trainers["kd"].teacher_model

    def teacher_forward():
        with torch.no_grad(), trainers["kd"].accelerator.autocast():
            return teacher(input_ids=inputs["input_ids"]).logits

    variants = {"plain": lambda: step(trainers["plain"], inputs), "teacher_fwd": teacher_forward,
                "kd": lambda: step(trainers["kd"], inputs)}  # fmt: skip
    times = {k: [] for k in variants}
    peaks = {}
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
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "vocab": vocab,
        "device": device,
        "dtype": dtype,
        "kd_compile": COMPILE,
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


def cpu_peak_child(vocab: int, which: str) -> dict:
    """
    Runs in a fresh process whose malloc returns freed memory at once (MALLOC_MMAP_THRESHOLD_ / TRIM_THRESHOLD_,
    set by the parent), so the resident set follows live tensors. The peak resident set of one step (reset through
    /proc/self/clear_refs after two warm-up steps) minus the resident set before any model existed: parameters,
    gradients, optimizer state and the step's activations and logits.
    """
    inputs = batch(vocab, "cpu")
    gc.collect()
    base = _status_mib("VmRSS")
    trainers = make_trainers(vocab, "cpu", "fp32", which)
    for _ in range(2):
        step(trainers[which], inputs)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set
    step(trainers[which], inputs)
    return {"which": which, "peak_above_base_mib": _status_mib("VmHWM") - base}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--vocabs", default="8192,32768")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_cost.json"))
    parser.add_argument("--compile", action="store_true", help="SALTConfig(kd_compile=True) for the KD step")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile:
        os.environ["SALT_KD_COMPILE"] = "1"
        global COMPILE
        COMPILE = True
    if args._child:
        print(json.dumps(cpu_peak_child(int(args._child[0]), args._child[1])))
        return

    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for vocab in [int(v) for v in args.vocabs.split(",")]:
        t0 = time.time()
        row = time_all(vocab, args.device, args.dtype, args.steps)
        if args.device == "cpu":
            for which in ("plain", "kd"):
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
                out = subprocess.run([sys.executable, __file__, "--_child", str(vocab), which], capture_output=True,
                                     text=True, check=True, env=env)  # fmt: skip
                row[f"peak_mib_{which}"] = json.loads(out.stdout.strip().splitlines()[-1])["peak_above_base_mib"]
            row["kd_peak_over_plain_peak"] = row["peak_mib_kd"] / row["peak_mib_plain"]
        row["wall_s"] = time.time() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print("| vocab | plain step s | teacher fwd s | KD step s | KD / (plain + teacher) | KD peak / plain peak |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['vocab']} | {r['plain_step_s']:.3f} | {r['teacher_forward_s']:.3f} | {r['kd_step_s']:.3f} | "
              f"{r['kd_over_plain_plus_teacher']:.3f} | {r['kd_peak_over_plain_peak']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
