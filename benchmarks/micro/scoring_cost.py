"""SALT_DS scoring: throughput against the teacher's plain forward, and its cost against a SALT run's wall-clock.

    python benchmarks/micro/scoring_cost.py                       # CPU, writes results/scoring_cost.json
    python benchmarks/micro/scoring_cost.py --device cuda --out results/scoring_cost_cuda.json

Throughput: the same rows go (a) through the teacher's plain forward under no_grad, batch by batch, and (b) through
`salt_hf.selection.score_dataset` (row batching from a dataset, forward, `sequence_scores`, shard files), each pass
timed in turn `--repeats` times so that drift hits both alike; tokens/s and the ratio (b)/(a) are reported.

Teachers: the 1M teacher of the demo and benchmarks, and a 20M one (wider: its matmuls weigh more against the
vocabulary-wide passes of scoring). Cost in a run: the demo's shapes (1M teacher, 5M student, vocab 8192, sequence
128, batch 16). Scoring the demo's training set (`--train_rows`, 18,345 rows of the prepared python corpus) is timed
at the measured scoring throughput; the SALT run is `--run_steps` (300) SALTTrainer steps at the measured step time
(the same process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402, F401  (puts every study folder on sys.path)
import torch  # noqa: E402
from bench import RESULTS, STUDENT, StepTimer, build_model, sync, write_json  # noqa: E402

from salt_hf import SALTConfig, SALTTrainer  # noqa: E402
from salt_hf.selection import score_dataset  # noqa: E402


@torch.no_grad()
def plain_forward(teacher, rows: torch.Tensor, batch: int, device: str) -> float:
    start = time.perf_counter()
    for a in range(0, rows.shape[0], batch):
        ids = rows[a : a + batch].to(device)
        teacher(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits  # noqa: B018
    sync(device)
    return time.perf_counter() - start


def scoring(teacher, dataset: list[dict], batch: int, device: str, top_k: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        score_dataset(
            teacher, dataset, cache_dir=cache, cache_key="bench", top_k=top_k, batch_size=batch, show_progress=False
        )
        sync(device)
        return time.perf_counter() - start


def salt_step_time(vocab: int, seq: int, batch: int, device: str, steps: int) -> float:
    student, teacher = build_model(STUDENT, vocab, seq, 0), build_model("1m", vocab, seq, 1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch * (steps + 2), seq), generator=g)
    data = [{"input_ids": r, "labels": r} for r in ids.tolist()]
    args = SALTConfig(
        output_dir=tempfile.mkdtemp(),
        report_to="none",
        use_cpu=device == "cpu",
        max_steps=steps + 2,
        per_device_train_batch_size=batch,
        kd_steps=steps + 2,
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=10**6,
        learning_rate=1e-3,
    )
    timer = StepTimer(device)
    SALTTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, callbacks=[timer]).train()
    return statistics.median(timer.times[2:])  # the first steps warm up


def throughput(size: str, vocab: int, args) -> dict:
    """Plain forward and scoring of the same rows, each pass timed in turn `--repeats` times."""
    teacher = build_model(size, vocab, args.seq, 1).to(args.device).eval()
    g = torch.Generator().manual_seed(vocab)
    rows = torch.randint(0, vocab, (args.rows, args.seq), generator=g)
    dataset = [{"input_ids": r, "labels": r} for r in rows.tolist()]
    plain_forward(teacher, rows[: args.batch], args.batch, args.device)  # warm-up
    plain, scored = [], []
    for _ in range(args.repeats):
        plain.append(plain_forward(teacher, rows, args.batch, args.device))
        scored.append(scoring(teacher, dataset, args.batch, args.device, args.top_k))
    tokens = args.rows * args.seq
    row = {
        "plain_forward_tokens_per_s": tokens / statistics.median(plain),
        "scoring_tokens_per_s": tokens / statistics.median(scored),
        "plain_s": plain,
        "scoring_s": scored,
    }
    row["ratio"] = row["scoring_tokens_per_s"] / row["plain_forward_tokens_per_s"]
    return row


def run_cost(result: dict, args) -> dict:
    """Scoring the demo's training set against a SALT run of `--run_steps` steps at the measured step time."""
    vocab = args.vocab[0]
    step = salt_step_time(vocab, args.seq, args.batch, args.device, args.step_samples)
    score_s = args.train_rows * args.seq / result["throughput"][f"{args.teachers[0]}/{vocab}"]["scoring_tokens_per_s"]
    run_s = step * args.run_steps
    return {
        "vocab": vocab,
        "salt_step_s": step,
        "run_steps": args.run_steps,
        "salt_run_s": run_s,
        "train_rows": args.train_rows,
        "scoring_s": score_s,
        "scoring_fraction_of_run": score_s / run_s,
        "tokens_trained": args.run_steps * args.batch * args.seq,
        "tokens_scored": args.train_rows * args.seq,
    }


def print_throughput(name: str, row: dict) -> None:
    size, vocab = name.split("/")
    plain, scored = row["plain_forward_tokens_per_s"], row["scoring_tokens_per_s"]
    print(
        f"teacher {size}, vocab {vocab}: plain forward {plain:,.0f} tok/s, scoring {scored:,.0f} tok/s, "
        f"ratio {row['ratio']:.3f}",
        flush=True,
    )


def print_run_cost(cost: dict) -> None:
    print(
        f"scoring {cost['train_rows']} rows: {cost['scoring_s']:.1f} s; SALT run of {cost['run_steps']} steps at "
        f"{cost['salt_step_s']:.3f} s/step: {cost['salt_run_s']:.1f} s; "
        f"scoring = {cost['scoring_fraction_of_run']:.1%} of the run",
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--teachers", nargs="+", default=["1m", "20m"], help="teacher sizes (salt_hf.models)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rows", type=int, default=256, help="rows per throughput pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--train_rows", type=int, default=18345)
    parser.add_argument("--run_steps", type=int, default=300)
    parser.add_argument("--step_samples", type=int, default=8, help="SALT steps timed for the run's step time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "scoring_cost.json"))
    parser.add_argument("--summarise-only", action="store_true", help="measure nothing: print the lines of --out")
    args = parser.parse_args(argv)
    if args.summarise_only:
        stored = json.loads(Path(args.out).read_text())
        for name, row in stored["throughput"].items():
            print_throughput(name, row)
        print_run_cost(stored["run_cost"])
        return
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    result = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    result.update(seq=args.seq, batch=args.batch, rows=args.rows, top_k=args.top_k, throughput={})
    for size, vocab in [(t, v) for t in args.teachers for v in args.vocab]:
        result["throughput"][f"{size}/{vocab}"] = row = throughput(size, vocab, args)
        print_throughput(f"{size}/{vocab}", row)
    result["run_cost"] = run_cost(result, args)
    print_run_cost(result["run_cost"])
    write_json(Path(args.out), result, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
