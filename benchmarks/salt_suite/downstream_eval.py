"""Downstream check in the paper's spirit: lm-evaluation-harness on the benchmark's saved students and teacher, on
the offline LAMBADA-style last-word task (salt_hf.evaluation) cut from the corpus's held-out documents.

    python benchmarks/salt_suite/salt_benchmark.py --corpus prose --save-models ...  # keeps the students
    python benchmarks/salt_suite/downstream_eval.py --corpus prose [--results benchmarks/results/cpu]

Every model is scored on the same passages (same held-out text, same seed) by the functions `salt-eval` runs
(salt_hf.evaluation, with its defaults), zero-shot: the models' window is 128 tokens, too short for few-shot prompts.
Writes <results>/<corpus>/downstream.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402, F401  (puts every study folder on sys.path)
from bench import RESULTS, WORK, teacher_dir, write_json  # noqa: E402

from salt_hf.evaluation import LASTWORD_TASK, evaluate_checkpoint, lastword_passages, write_lastword_task  # noqa: E402


def heldout_folder(corpus: str) -> Path:
    folder = WORK / corpus / "heldout"
    if not any(folder.glob("*.txt")):  # corpora prepared before prepare_corpora.py wrote the held-out text
        from prepare_corpora import builtin_corpus, prose_corpus, write_heldout_text  # needs datasets (and apt)

        data = prose_corpus() if corpus == "prose" else builtin_corpus(validation_fraction=0.05)
        if data is None:
            raise SystemExit(f"{corpus}: cannot rebuild the held-out text (see prepare_corpora.py)")
        if "path" in data["validation"].column_names:
            data = data.rename_column("path", "name")
        write_heldout_text(data["validation"], folder)
    return folder


def write_task(folder: Path, task_dir: str, passages: int) -> None:
    """The last-word task from the held-out documents, as `salt-eval --lastword_text <folder>` builds it."""
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in sorted(folder.rglob("*.txt"))]
    write_lastword_task(lastword_passages(texts), task_dir, max_passages=passages, seed=0)


def score(model: Path, tokenizer: Path, task_dir: str, device: str) -> dict:
    results = evaluate_checkpoint(
        str(model),
        [LASTWORD_TASK],
        tokenizer=str(tokenizer),
        include_path=task_dir,
        num_fewshot=0,
        batch_size=32,
        device=device,
    )
    res = results["results"][LASTWORD_TASK]
    print(f"{model}: acc {res['acc,none']:.4f}, perplexity {res['perplexity,none']:.4f}", flush=True)
    return {
        "acc": res["acc,none"],
        "acc_stderr": res["acc_stderr,none"],
        "perplexity": res["perplexity,none"],
        "passages": results["n_samples"][LASTWORD_TASK]["effective"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="prose")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--passages", type=int, default=2000, help="at most this many scored passages")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = WORK / args.corpus
    models = {"teacher_1m": teacher_dir(args.corpus, "1m")}
    models.update({p.parent.name: p for p in sorted((work / "runs").glob("*/final")) if (p / "config.json").is_file()})
    out = {"corpus": args.corpus, "task": LASTWORD_TASK, "num_fewshot": 0, "models": {}}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="salt_eval_") as task_dir:
        write_task(heldout_folder(args.corpus), task_dir, args.passages)
        for name, path in models.items():
            if not (path / "config.json").is_file():
                print(f"{name}: no saved model at {path}, skipped")
                continue
            out["models"][name] = score(path, work / "tokenizer", task_dir, args.device)
    out["runtime_s"] = time.time() - t0
    write_json(args.results / args.corpus / "downstream.json", out, indent=2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
