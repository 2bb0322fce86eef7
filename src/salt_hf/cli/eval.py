"""salt-eval: downstream evaluation of checkpoints with lm-evaluation-harness (pip install 'salt_hf[eval]').

    # offline: a LAMBADA-style last-word task cut from held-out prose that no run trained on
    salt-eval --model_name_or_path runs/salt --lastword_text heldout/*.txt --output_file runs/salt/lastword.json
    # the harness's standard tasks (their datasets must be in the local Hugging Face cache when offline)
    salt-eval --model_name_or_path runs/salt --tasks lambada_openai,hellaswag --num_fewshot 0 --device cuda

    # next-token accuracy and perplexity on the same held-out files, beside the harness's results
    salt-eval --model_name_or_path runs/salt --lastword_text heldout/*.txt --next_token_seq_length 256

Flags may also come from `--config file.yaml`, as for salt-train. Writes one JSON with the harness's results per
task (and the next-token metrics) and the arguments that produced them; an existing output file is never
overwritten.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..evaluation import (
    LASTWORD_TASK,
    evaluate_checkpoint,
    icl_probe_checkpoint,
    lastword_passages,
    next_token_metrics,
    require_lm_eval,
    task_manager_for,
    write_lastword_task,
)
from .args import InputError, as_input_error, check_model_source, parse_args


@dataclass
class EvalArguments:
    model_name_or_path: str = field(metadata={"help": "A save_pretrained folder (salt-train's output_dir)."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Defaults to the model's folder."})
    tasks: str | None = field(
        default=None,
        metadata={"help": f"Comma-separated harness tasks. Default: {LASTWORD_TASK} when --lastword_text is given."},
    )
    lastword_text: list[str] | None = field(
        default=None,
        metadata={"help": f"Held-out text files (or folders of .txt files) for the offline {LASTWORD_TASK} task."},
    )
    lastword_max_passages: int = field(default=1000, metadata={"help": "At most this many scored passages."})
    lastword_min_words: int = field(default=30, metadata={"help": "Shortest passage, in words."})
    lastword_max_words: int = field(
        default=70, metadata={"help": "Longest passage, in words (keep contexts within the model's window)."}
    )
    next_token_seq_length: int | None = field(
        default=None,
        metadata={
            "help": "Also score next-token accuracy and perplexity on the --lastword_text files, in windows of "
            "this many tokens."
        },
    )
    icl_probe: bool = field(
        default=False,
        metadata={"help": "Also run the in-context learning probe: random token sequences repeated twice."},
    )
    icl_sequences: int = field(default=64, metadata={"help": "ICL probe: how many random sequences."})
    icl_length: int = field(default=32, metadata={"help": "ICL probe: tokens per copy (2x this must fit the model)."})
    include_path: str | None = field(default=None, metadata={"help": "A folder of your own harness task YAMLs."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples per prompt (task default)."})
    batch_size: int = field(default=16, metadata={"help": "Harness batch size."})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, ..."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    limit: float | None = field(default=None, metadata={"help": "Score only this many (or this fraction of) docs."})
    seed: int = field(default=0, metadata={"help": "Seed of the harness (few-shot sampling) and of the task split."})
    output_file: str | None = field(default=None, metadata={"help": "Results JSON; must not exist yet."})


def _text_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.txt")))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"--lastword_text {p}: no such file or folder.")
    if not files:
        raise InputError(f"--lastword_text {paths}: no .txt files there.")
    return files


def check(args: EvalArguments) -> None:
    """Every check that can fail, before the harness loads anything."""
    check_model_source("--model_name_or_path", args.model_name_or_path)
    check_model_source("--tokenizer_name_or_path", args.tokenizer_name_or_path)
    model = Path(args.model_name_or_path)
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not (model / "config.json").is_file():
        raise InputError(
            f"--model_name_or_path {model}: no config.json there and the hub is offline; give a save_pretrained"
            " folder."
        )
    if not args.tasks and not args.lastword_text and not args.icl_probe:
        raise InputError(
            "nothing to evaluate: give --tasks (harness task names), --lastword_text (files) and/or --icl_probe."
        )
    if args.output_file and Path(args.output_file).exists():
        raise InputError(f"--output_file {args.output_file} exists; nothing was changed. Choose another path.")
    if args.lastword_min_words < 2 or args.lastword_max_words < args.lastword_min_words:
        raise InputError("need 2 <= --lastword_min_words <= --lastword_max_words.")
    if args.next_token_seq_length is not None and (args.next_token_seq_length < 2 or not args.lastword_text):
        raise InputError("--next_token_seq_length needs at least 2 tokens per window and --lastword_text files.")
    if args.icl_sequences < 1 or args.icl_length < 2:
        raise InputError("need --icl_sequences >= 1 and --icl_length >= 2.")
    if args.tasks or args.lastword_text:
        with as_input_error(ImportError):
            require_lm_eval()


def run(args: EvalArguments) -> dict:
    check(args)
    report = {"arguments": asdict(args), "results": {}, "n_samples": {}}
    if args.tasks or args.lastword_text:
        report |= harness(args)
    if args.icl_probe:
        report["icl_probe"] = icl_probe_checkpoint(
            args.model_name_or_path,
            tokenizer=args.tokenizer_name_or_path,
            sequences=args.icl_sequences,
            length=args.icl_length,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
        )
    print_report(report)
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def harness(args: EvalArguments) -> dict:
    """The harness's tasks (and the last-word task cut from --lastword_text), and the next-token metrics."""
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    files = _text_files(args.lastword_text) if args.lastword_text else []
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    with tempfile.TemporaryDirectory(prefix="salt_eval_") as tmp:
        include = [args.include_path] if args.include_path else []
        if texts:
            passages = lastword_passages(texts, min_words=args.lastword_min_words, max_words=args.lastword_max_words)
            with as_input_error(ValueError):
                write_lastword_task(passages, tmp, max_passages=args.lastword_max_passages, seed=args.seed)
            include.append(tmp)
            if LASTWORD_TASK not in tasks:
                tasks.append(LASTWORD_TASK)
        if len(include) > 1:  # the harness takes one include folder: gather the user's YAMLs beside ours
            for y in Path(include[0]).glob("*.yaml"):
                (Path(tmp) / y.name).write_text(y.read_text())
        with as_input_error(ValueError):
            task_manager = task_manager_for(tasks, include[-1] if include else None)
        results = evaluate_checkpoint(
            args.model_name_or_path,
            tasks,
            tokenizer=args.tokenizer_name_or_path,
            include_path=include[-1] if include else None,
            num_fewshot=args.num_fewshot,
            batch_size=args.batch_size,
            device=args.device,
            limit=int(args.limit) if args.limit and args.limit >= 1 else args.limit,
            dtype=args.dtype,
            seed=args.seed,
            task_manager=task_manager,
        )
    report = {"results": results["results"], "n_samples": results["n_samples"]}
    if args.next_token_seq_length is not None:
        # the texts gave the last-word task its passages, so they hold windows to score
        report["next_token"] = next_token_metrics(
            args.model_name_or_path,
            texts,
            args.next_token_seq_length,
            tokenizer=args.tokenizer_name_or_path,
            batch_size=args.batch_size,
            device=args.device,
            dtype=args.dtype,
        )
    return report


def print_report(report: dict) -> None:
    lines = dict(report["results"])
    for extra in ("next_token", "icl_probe"):
        if extra in report:
            lines[extra] = report[extra]
    for task, metrics in lines.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and "stderr" not in k)
        print(f"{task}: {shown}")


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = parse_args(argv, classes=(EvalArguments,))
        run(args)
    except InputError as err:  # anything else is a bug and keeps its traceback
        print(f"salt-eval: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
