"""A KD step reading stored teacher targets against the plain step, at large vocabularies (CPU, same hidden states).

    python benchmarks/teacher_targets/whole_step_cost.py            # vocab 32k and 152k -> results/teacher_targets
    python benchmarks/teacher_targets/whole_step_cost.py --vocabs 8192 --tokens 512 --steps 2   # smoke run

The sizes are micro/step_cost.py's (student 8x512, teacher 4x256, rows of 256 tokens). Every variant is a real
`training_step` plus the optimizer step, interleaved in one process (medians over --steps after two warm-up rounds):
the plain `Trainer` step (the model's own loss), SALTTrainer's plain-stage step on the fused path (w = 0), its KD step
with the online teacher (fused), and its KD step reading a store of the teacher's targets (sampled and top-K, K ids
per token; the stores are written first, for the batch's rows, by the same teacher). Transient memory: each variant's
peak resident set during one step above the resident set before it, in a fresh process (micro/step_cost.py's method).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers beside the studies

import bench  # noqa: E402, F401  (puts micro/, whose step_cost.py this imports, on sys.path)
import step_cost  # noqa: E402
import torch  # noqa: E402
from bench import RESULTS, build_model, write_json  # noqa: E402
from datasets import Dataset  # noqa: E402
from transient_memory import transient_peaks  # noqa: E402

from salt_hf import SALTConfig, SALTTrainer  # noqa: E402
from salt_hf.targets import ROW_ID, store_targets  # noqa: E402

KINDS = ("plain", "plain_fused", "kd_fused", "kd_stored_sampled", "kd_stored_topk")


def rows_dataset(inputs: dict) -> Dataset:
    return Dataset.from_dict({"input_ids": inputs["input_ids"].tolist(), "labels": inputs["labels"].tolist()})


def make_store(vocab: int, inputs: dict, form: str, k: int, cli, folder: Path) -> str:
    """The teacher's targets for the batch's rows (the benchmark's teacher, seed 1, as make_trainer builds it)."""
    ds = rows_dataset(inputs)
    teacher = build_model(cli.teacher, vocab, cli.seq, 1)
    path = folder / f"{form}_{vocab}"
    store_targets(
        teacher,
        ds,
        path,
        form=form,
        k=k,
        vocab_size=vocab,
        rows_per_shard=len(ds),
        batch_size=1,
        teacher_fingerprint="benchmark teacher",
        device="cpu",
    )
    return str(path)


def make(kind: str, vocab: int, inputs: dict, cli, folder: Path):
    """(trainer, its inputs): step_cost.py's trainers, and SALTTrainer reading a store (its rows carry their ids)."""
    if not kind.startswith("kd_stored"):
        return step_cost.make_trainer(kind, vocab, inputs["input_ids"].shape[0], cli), inputs
    store = make_store(vocab, inputs, kind.removeprefix("kd_stored_"), cli.k, cli, folder)
    rows = inputs["input_ids"].shape[0]
    args = SALTConfig(
        output_dir="/tmp/salt_step_cost_stored",
        report_to="none",
        use_cpu=True,
        per_device_train_batch_size=rows,
        max_steps=10**6,
        optim="adamw_torch",
        disable_tqdm=True,
        kd_weight=0.5,
        kd_steps=10**6,
        loss_implementation="fused_linear",
        teacher_targets=store,
    )
    trainer = SALTTrainer(
        model=build_model(cli.student, vocab, cli.seq, 0), args=args, train_dataset=rows_dataset(inputs)
    )
    trainer.model = trainer.accelerator.prepare(trainer.model.to(trainer.args.device))
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.resolve_kd_steps(10**6)
    return trainer, {**inputs, ROW_ID: torch.arange(rows)}


def time_all(vocab: int, tokens: int, cli, folder: Path) -> dict:
    inputs = step_cost.batch(vocab, tokens // cli.seq, cli.seq, "cpu")
    made = {kind: make(kind, vocab, inputs, cli, folder) for kind in KINDS}
    variants = {kind: (lambda t=t, x=x: step_cost.step(t, dict(x))) for kind, (t, x) in made.items()}
    med, _ = step_cost.measure(variants, "cpu", cli.steps)
    row = {"vocab": vocab, "tokens": tokens, "k": cli.k, "threads": torch.get_num_threads(), "steps": cli.steps}
    row |= {f"{kind}_step_s": med[kind] for kind in KINDS}
    for kind in KINDS[2:]:
        row[f"{kind}_over_plain"] = med[kind] / med["plain"]
        row[f"{kind}_over_plain_fused"] = med[kind] / med["plain_fused"]
    return row


def child(vocab: int, tokens: int, kind: str, cli) -> dict:
    """In a fresh process: one step's peak resident set above the one before it (step_cost.cpu_peak_child)."""
    inputs = step_cost.batch(vocab, tokens // cli.seq, cli.seq, "cpu")
    with tempfile.TemporaryDirectory() as folder:
        trainer, x = make(kind, vocab, inputs, cli, Path(folder))
        for _ in range(2):
            step_cost.step(trainer, dict(x))
        before = step_cost._status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        step_cost.step(trainer, dict(x))
        return {"kind": kind, "transient_mib": step_cost._status_mib("VmHWM") - before}


def peaks(vocab: int, tokens: int, cli) -> dict:
    options = ["--k", str(cli.k), "--student", cli.student, "--teacher", cli.teacher, "--seq", str(cli.seq)]
    return transient_peaks(__file__, [str(vocab), str(tokens)], KINDS, options)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabs", default="32768,151936")
    parser.add_argument("--tokens", default="1024", help="tokens per step, multiples of --seq")
    parser.add_argument("--seq", type=int, default=step_cost.SEQ)
    parser.add_argument("--student", default=step_cost.STUDENT)
    parser.add_argument("--teacher", default=step_cost.TEACHER)
    parser.add_argument("--k", type=int, default=16, help="ids per token in the stores")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "teacher_targets" / "step_cost.json"))
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cli.device, cli.dtype, cli.compile = "cpu", "fp32", False  # what step_cost.make_trainer reads
    torch.set_num_threads(cli.threads)
    if cli._child:
        vocab, tokens, kind = cli._child
        print(json.dumps(child(int(vocab), int(tokens), kind, cli)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for vocab in [int(v) for v in cli.vocabs.split(",")]:
            for tokens in [int(t) for t in cli.tokens.split(",")]:
                t0 = time.time()
                row = time_all(vocab, tokens, cli, Path(folder) / str(tokens))
                if not cli.no_memory:
                    row |= peaks(vocab, tokens, cli)
                row["wall_s"] = time.time() - t0
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_json(Path(cli.out), rows, indent=1)


if __name__ == "__main__":
    main()
