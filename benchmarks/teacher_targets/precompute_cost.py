"""What a store costs: bytes per token and the precompute's tokens/s for K = 4, 16, 64, both forms, three vocabularies.

    python benchmarks/teacher_targets/precompute_cost.py             # -> results/teacher_targets/precompute_cost.json
    python benchmarks/teacher_targets/precompute_cost.py --vocabs 300 --ks 4 --rows 8   # smoke run

Vocabulary 300: the paper-regime pair's trained teacher (3x80) on its corpus's rows of 128 tokens, beside the student's
plain step (4x96, 16 rows), timed in the same process so that the precompute can be counted in plain steps.
Vocabularies 32k and 152k: step_cost.py's teacher (4x256, random weights: the cost does not depend on them) on rows
of 256 random tokens. One thread; the store is written to a temporary folder and its files' bytes counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers beside the studies

import bench  # noqa: E402
import step_cost  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from salt_hf.targets import TargetStore, store_targets  # noqa: E402


def rows_for(vocab: int, n: int):
    """(teacher, rows dataset, tokens per row)."""
    if vocab == 300:
        name = "regime_python"
        _, train, _ = bench.load_corpus(name)
        teacher = AutoModelForCausalLM.from_pretrained(bench.teacher_dir(name, "paper_half")).eval()
        ids = train.rows[:n].long()
    else:
        teacher = bench.build_model(step_cost.TEACHER, vocab, step_cost.SEQ, 1).eval()
        ids = torch.randint(0, vocab, (n, step_cost.SEQ), generator=torch.Generator().manual_seed(0))
    return teacher, Dataset.from_dict({"input_ids": ids.tolist()}), ids.shape[1]


def plain_step_s(repeats: int = 5) -> float:
    """The paper pair's plain Trainer step (4x96 student, 16 rows of 128 tokens), median of `repeats`."""
    cli = argparse.Namespace(student="4x96", seq=128, device="cpu", dtype="fp32", compile=False)
    trainer = step_cost.make_trainer("plain", 300, 16, cli)
    inputs = step_cost.batch(300, 16, 128, "cpu")
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        step_cost.step(trainer, inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def measure(vocab: int, k: int, form: str, n: int) -> dict:
    teacher, ds, _ = rows_for(vocab, n)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        # a named fingerprint: hashing the weights is a one-off cost, not a per-token one
        store_targets(
            teacher,
            ds,
            Path(folder) / "s",
            form=form,
            k=k,
            vocab_size=vocab,
            batch_size=4,
            device="cpu",
            teacher_fingerprint="benchmark",
        )
        seconds = time.perf_counter() - t0
        return {"vocab": vocab, **cost_row(TargetStore(Path(folder) / "s"), seconds)}


def cost_row(store: TargetStore, seconds: float) -> dict:
    """What a store written in `seconds` holds and costs: its form, K, rows and tokens, tokens/s, bytes per token."""
    m = store.manifest
    tokens = m.rows * m.seq_length
    return {
        "form": m.form,
        "k": m.k,
        "rows": m.rows,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "bytes_per_token": store.bytes_per_token(),
        "store_mb": sum(s["bytes"] for s in m.shards) / 1e6,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabs", default="300,32768,151936")
    parser.add_argument("--ks", default="4,16,64")
    parser.add_argument("--rows", type=int, default=None, help="rows per store (default: 512 at vocab 300, else 8)")
    parser.add_argument("--out", default=str(bench.RESULTS / "teacher_targets" / "precompute_cost.json"))
    cli = parser.parse_args()
    torch.set_num_threads(1)
    rows, before = [], plain_step_s()
    for vocab in [int(v) for v in cli.vocabs.split(",")]:
        for k in [int(x) for x in cli.ks.split(",")]:
            for form in ("sampled", "topk"):
                row = measure(vocab, k, form, cli.rows or (512 if vocab == 300 else 8))
                rows.append(row)
                print(json.dumps(row), flush=True)
    plain = statistics.mean([before, plain_step_s()])  # before and after: the machine's load drifts
    for row in rows:  # the precompute of one step's tokens (16 x 128), in plain steps of the paper pair's student
        row["precompute_per_step_tokens_in_plain_steps"] = 2048 / row["tokens_per_s"] / plain
    bench.write_json(Path(cli.out), {"paper_pair_plain_step_s": plain, "threads": 1, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
