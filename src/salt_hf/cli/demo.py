"""`make demo` / `salt-demo`: SALT against plain training on the built-in corpus, on a laptop CPU, no download.

    salt-demo --config configs/demo.yaml

1. trains a byte-level BPE tokenizer on the built-in corpus (the Python standard library's own source);
2. pretrains a small teacher (`--teacher_config`);
3. trains the student (`--model_config`) three times from the same seed and data order: plain, with SALT (the
   KD stage ending by itself, `kd_steps="auto"`, unless the config fixes n_KD), and with KD for the whole run (the
   paper's negative control: a student that outgrows its teacher is held back by KD that never ends);
4. prints a table (final loss, where each student passed the teacher's final loss, where the KD stage ended, steps
   to the baseline's final loss), writes `curves.png` (validation loss of the three runs, the teacher's final loss as
   a line) and `summary.json` to the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpointing import atomic_write_text
from . import args as cli
from .train import corpus_texts, run


@dataclass
class DemoArguments:
    teacher_config: str = field(default="1m", metadata={"help": "Size of the demo's teacher (named or JSON)."})
    teacher_max_steps: int = field(default=600, metadata={"help": "Optimizer steps of the teacher's pretraining."})
    teacher_learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate of the teacher."})
    kd_all_control: bool = field(
        default=True, metadata={"help": "Also train the student with KD for the whole run (the negative control)."}
    )


def eval_curve(log_history) -> list[tuple[int, float]]:
    """(step, validation loss) once per step: the final evaluate() repeats the last periodic evaluation."""
    by_step = {h["step"]: h["eval_loss"] for h in log_history if "eval_loss" in h}
    return sorted(by_step.items())


def steps_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose validation loss is at or below `target` (None if never)."""
    return next((step for step, loss in curve if loss <= target), None)


def plot_curves(
    curves: dict[str, list[tuple[int, float]]], path: str, title: str, teacher_loss: float | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in curves.items():
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o", markersize=3, label=name)
    if teacher_loss is not None:
        ax.axhline(teacher_loss, color="gray", linestyle="--", label=f"teacher's final loss ({teacher_loss:.3f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(results: dict[str, dict], kd_steps: dict[str, int]) -> dict:
    """Per run: final loss, the step at which it passed the teacher's final loss, where its KD stage ended
    (`kd_steps`: the SALT runs'), the steps to the baseline's final loss."""
    base_curve = eval_curve(results["baseline"]["log_history"])
    target = base_curve[-1][1]
    total = base_curve[-1][0]
    teacher_loss = results["teacher"]["metrics"]["eval_loss"]
    rows = {}
    for name, res in results.items():
        m = res["metrics"]
        curve = eval_curve(res["log_history"])
        student = name != "teacher"
        reach = steps_to_target(curve, target) if student else None
        rows[name] = {
            "eval_loss": m["eval_loss"],
            "perplexity": math.exp(m["eval_loss"]),
            "accuracy": m.get("eval_accuracy"),
            "train_runtime_s": m["train_runtime"],
            "steps": curve[-1][0] if curve else None,
            "kd_end_step": kd_steps.get(name),
            "passes_teacher_at_step": steps_to_target(curve, teacher_loss) if student else None,
            "steps_to_baseline_final": reach,
            "steps_to_target_ratio": reach / total if reach is not None else None,
            "curve": curve,
        }
    return {"baseline_final_eval_loss": target, "teacher_final_eval_loss": teacher_loss, "runs": rows}


def print_table(summary: dict) -> None:
    columns = ("val loss", "ppl", "acc", "wall s", "KD ended", "passes teacher", "steps to baseline final")
    head = f"{'run':<10}" + "".join(f"{c:>{max(9, len(c) + 2)}}" for c in columns)
    print("\n" + head + "\n" + "-" * len(head))
    for name, r in summary["runs"].items():
        reach = "-" if name == "teacher" else (r["steps_to_baseline_final"] or "not reached")
        if name != "teacher" and r["steps_to_target_ratio"] is not None:
            reach = f"{reach} ({r['steps_to_target_ratio']:.2f})"
        passes = "-" if name == "teacher" else (r["passes_teacher_at_step"] or "never")
        kd_end = "-" if r["kd_end_step"] is None else r["kd_end_step"]
        losses = f"{r['eval_loss']:>10.4f}{r['perplexity']:>9.2f}{(r['accuracy'] or 0):>9.3f}"
        print(f"{name:<10}{losses}{r['train_runtime_s']:>9.1f}{kd_end!s:>10}{passes!s:>16}{reach:>25}")
    print()


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, training_args, run_args, demo_args = cli.parse_args(
            argv, (*cli.ARG_CLASSES, DemoArguments)
        )
        return run_demo(model_args, data_args, training_args, run_args, demo_args)
    except cli.InputError as err:  # anything else is a bug and keeps its traceback
        print(f"salt-demo: error: {err}", file=sys.stderr)
        return 2


def run_demo(
    model_args: cli.ModelArguments,
    data_args: cli.DataArguments,
    training_args,
    run_args: cli.RunArguments,
    demo_args: DemoArguments,
) -> int:
    from ..data import builtin_corpus, train_bpe_tokenizer

    root = training_args.output_dir
    cli.check_output_dir(training_args, run_args)

    # 1) one tokenizer for teacher and student (token-level KD needs the same token ids)
    with cli.as_input_error(ValueError):
        corpus = builtin_corpus(
            validation_fraction=data_args.validation_fraction, max_bytes=data_args.max_corpus_bytes
        )
        os.makedirs(root, exist_ok=True)
        tokenizer = train_bpe_tokenizer(
            corpus_texts(corpus["train"], "text"),
            vocab_size=model_args.tokenizer_vocab_size,
            save_dir=os.path.join(root, "tokenizer"),
        )

    def args_for(name: str, **changes):
        return dataclasses.replace(training_args, output_dir=os.path.join(root, name), **changes)

    results = {}
    # 2) the teacher: small, pretrained once (a small LM is an existing asset in SALT)
    teacher_model_args = dataclasses.replace(model_args, model_config=demo_args.teacher_config)
    results["teacher"] = run(
        teacher_model_args,
        data_args,
        args_for(
            "teacher",
            max_steps=demo_args.teacher_max_steps,
            learning_rate=demo_args.teacher_learning_rate,
            kd_weight=0.0,
            kd_steps=None,
            kd_ratio=None,
            teacher_model_name_or_path=None,
            kd_data_selection=False,
        ),
        run_args,
        tokenizer=tokenizer,
    )
    # 3) the student twice, same seed and data order: plain, then SALT with the teacher above
    baseline_args = args_for("baseline", kd_weight=0.0, teacher_model_name_or_path=None, kd_data_selection=False)
    results["baseline"] = run(model_args, data_args, baseline_args, run_args, tokenizer=tokenizer)
    salt_args = args_for("salt", teacher_model_name_or_path=os.path.join(root, "teacher"))
    results["salt"] = run(model_args, data_args, salt_args, run_args, tokenizer=tokenizer)
    if demo_args.kd_all_control:  # the negative control: KD that never ends
        control = dict(kd_steps=None, kd_ratio=1.0, kd_auto_fall_ratio=None, kd_data_selection=False)
        kd_all_args = args_for("kd_all", teacher_model_name_or_path=os.path.join(root, "teacher"), **control)
        results["kd_all"] = run(model_args, data_args, kd_all_args, run_args, tokenizer=tokenizer)

    # 4) report
    write_report(results, model_args, data_args, training_args, demo_args)
    return 0


def write_report(
    results: dict, model_args: cli.ModelArguments, data_args: cli.DataArguments, training_args, demo_args
) -> None:
    """`summary.json` and `curves.png` in the demo's output folder, and the table on stdout."""
    root = training_args.output_dir
    kd_steps = {name: results[name]["trainer"].kd_steps for name in ("salt", "kd_all") if name in results}
    summary = summarise(results, kd_steps)
    summary["config"] = {
        "student": model_args.model_config,
        "teacher": demo_args.teacher_config,
        "kd_weight": training_args.kd_weight,
        "kd_steps": "auto" if training_args.kd_auto else training_args.kd_steps,
        "kd_ratio": training_args.kd_ratio,
        "kd_schedule": training_args.kd_schedule,
        "kd_data_selection": training_args.kd_data_selection,
        "max_steps": training_args.max_steps,
        "seq_length": data_args.seq_length,
    }
    atomic_write_text(Path(root, "summary.json"), json.dumps(summary, indent=2) + "\n")
    curves = {name: summary["runs"][name]["curve"] for name in ("baseline", "salt", "kd_all") if name in results}
    title = f"SALT's KD stage ended at step {kd_steps['salt']} of {training_args.max_steps}"
    plot_curves(curves, os.path.join(root, "curves.png"), title, summary["teacher_final_eval_loss"])
    print_table(summary)
    print(f"Wrote {root}/summary.json and {root}/curves.png")


if __name__ == "__main__":
    sys.exit(main())
