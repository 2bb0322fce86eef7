"""The paper-regime suite's figure (issue 24, point 5): held-out curves per setting with the teachers' final losses
as lines, the budget form, the gain against the teacher's size and against the student's size."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402, F401  (puts every study folder on sys.path)
from bench import RunResult  # noqa: E402

# the curves drawn, when stored: the baseline, KD for the whole run (dashed), the automatic stop with each teacher,
# the fixed ends
CURVES = (
    "baseline_s0",
    "kd_all",
    "auto_additive_s0",
    "auto_step_s0",
    "fixed_add_r0.2",
    "fixed_add_r0.4",
    "auto_quarter",
    "auto_eighth",
)


def plot(corpus: str, runs: dict[str, RunResult], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    curves(axes[0][0], corpus, runs, summary)
    budget(axes[0][1], runs, summary)
    axis(axes[1][0], summary.get("teacher_axis") or [], "ratio", "teacher", "teacher / student parameters")
    axis(axes[1][1], summary.get("scale_axis") or [], "student_params", "student", "student parameters")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves(ax, corpus: str, runs: dict[str, RunResult], summary: dict) -> None:
    for name in CURVES:
        if name in runs:
            curve = runs[name].curve_step_test_dev[3:]
            style = "--" if name == "kd_all" else "-"
            ax.plot([c[0] for c in curve], [c[1] for c in curve], style, lw=1, label=name)
    teachers = summary.get("teacher_final_loss", {})
    for t, row in teachers.items():
        ax.axhline(row["final_test_loss"], color="grey", lw=0.8, ls=":")
        ax.annotate(f"teacher {t}", (summary["steps"] * 0.85, row["final_test_loss"]), fontsize=8, va="bottom")
    if "half" in teachers:
        ax.set_ylim(top=teachers["half"]["final_test_loss"] + 0.3)
    ax.set(xlabel="optimizer step", ylabel="held-out test loss (nats/token)", title=f"{corpus}: 0.47M student")
    ax.legend(fontsize=8)


def budget(ax, runs: dict[str, RunResult], summary: dict) -> None:
    """Final test loss against the budget fraction, per seed, with the baselines' final losses as lines."""
    for seed, finals in (summary.get("auto", {}).get("budget_finals") or {}).items():
        points = sorted((float(b), loss) for b, loss in finals.items())
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"auto stop, seed {seed}")
    plain = sorted(
        (float(b), loss) for b, loss in (summary.get("auto", {}).get("baseline_budget_finals") or {}).items()
    )
    if plain:
        ax.plot([p[0] for p in plain], [p[1] for p in plain], "kx", label="plain run of that length, seed 0")
    for i, loss in enumerate(summary.get("baseline_final_loss", {}).get("seeds", [])):
        ax.plot([1.0], [loss], "s", color=f"C{i}")
        ax.axhline(loss, color=f"C{i}", lw=0.8, ls=":")  # the target: the same seed's baseline at its full length
    ax.set(xlabel="budget (fraction of the baseline's steps)", ylabel="final test loss", title="budget form")
    ax.legend(fontsize=8)


def axis(ax, rows: list[dict], x: str, label: str, xlabel: str) -> None:
    ax.plot([r[x] for r in rows], [r["gain_over_baseline"] for r in rows], "o-")
    for r in rows:
        ax.annotate(r[label], (r[x], r["gain_over_baseline"]), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel=xlabel, ylabel="baseline final - auto stop final (nats)", title=f"gain vs {label} size")
