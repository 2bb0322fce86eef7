"""Downstream check in the paper's spirit: lm-evaluation-harness on the benchmark's saved students and teacher, on
the offline LAMBADA-style last-word task (salt_hf.evaluation) cut from the corpus's held-out documents.

    python benchmarks/salt_benchmark.py --corpus prose --save-models ...    # students saved in work/prose/runs/*/final
    python benchmarks/downstream_eval.py --corpus prose [--results benchmarks/results/cpu]

Every model is scored on the same passages (same held-out text, same seed) with `salt-eval`'s code path, zero-shot:
the models' window is 128 tokens, too short for few-shot prompts. Writes <results>/<corpus>/downstream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from salt_hf.cli.eval import EvalArguments, run  # noqa: E402
from salt_hf.evaluation import LASTWORD_TASK  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK, RESULTS = HERE / "work", HERE / "results"


def heldout_folder(corpus: str) -> Path:
    folder = WORK / corpus / "heldout"
    if not any(folder.glob("*.txt")):  # corpora prepared before prepare_corpora.py wrote the held-out text
        sys.path.insert(0, str(HERE))
        from prepare_corpora import builtin_corpus, prose_corpus, write_heldout_text

        data = prose_corpus() if corpus == "prose" else builtin_corpus(validation_fraction=0.05)
        if data is None:
            raise SystemExit(f"{corpus}: cannot rebuild the held-out text (see prepare_corpora.py)")
        if "path" in data["validation"].column_names:
            data = data.rename_column("path", "name")
        write_heldout_text(data["validation"], folder)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="prose")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--passages", type=int, default=2000, help="at most this many (default: all)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = WORK / args.corpus
    models = {"teacher_1m": work / "teachers" / "1m"}
    models.update({p.parent.name: p for p in sorted((work / "runs").glob("*/final")) if (p / "config.json").is_file()})
    folder = heldout_folder(args.corpus)
    out = {"corpus": args.corpus, "task": LASTWORD_TASK, "num_fewshot": 0, "models": {}}
    t0 = time.time()
    for name, path in models.items():
        if not (path / "config.json").is_file():
            print(f"{name}: no saved model at {path}, skipped")
            continue
        report = run(
            EvalArguments(
                model_name_or_path=str(path),
                tokenizer_name_or_path=str(work / "tokenizer"),
                lastword_text=[str(folder)],
                lastword_max_passages=args.passages,
                num_fewshot=0,
                device=args.device,
                batch_size=32,
            )
        )
        res = report["results"][LASTWORD_TASK]
        out["models"][name] = {
            "acc": res["acc,none"],
            "acc_stderr": res["acc_stderr,none"],
            "perplexity": res["perplexity,none"],
            "passages": report["n_samples"][LASTWORD_TASK]["effective"],
        }
    out["runtime_s"] = time.time() - t0
    dest = args.results / args.corpus / "downstream.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
