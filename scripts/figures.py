"""`make figures`: every figure of README.md and docs/, drawn from the benchmarks' committed JSON (none by hand).

    python scripts/figures.py                       # -> docs/figures/*.png
    python scripts/figures.py --out /tmp/figs       # anywhere else (the tests do this)

Reads only benchmarks/results/ (written by the benchmark scripts; see benchmarks/README.md for their commands) and
writes one PNG per figure. Each figure names the runs it draws in its title or legend, so a reader can find them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "figures"
DPI = 110  # about 800 px wide at the sizes below: sharp on GitHub, small in the repository
# One colour per arm across every figure, so a reader learns them once.
COLOURS = {"baseline": "#4d4d4d", "salt": "#1f77b4", "salt_convex": "#9ecae1", "kd_all": "#d62728"}
TEACHER = "#2ca02c"


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_curve(corpus: str, name: str, results: Path) -> tuple[list[int], list[float]]:
    """(steps, held-out test loss) of one paper-regime run."""
    curve = load(results / "paper_regime" / corpus / "runs" / f"{name}.json")["curve_step_test_dev"]
    return [int(step) for step, _, _ in curve], [test for _, test, _ in curve]


def finish(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def figure_curves(results: Path, out: Path) -> Path:
    """Figure 1: SALT's regime on one seed: baseline, SALT (both mixes), KD for the whole run, the teacher's line."""
    corpus = "python"
    runs = {
        "baseline": ("baseline_s0", "baseline (no teacher)"),
        "salt": ("auto_additive_s0", 'SALT, automatic stop, kd_mix="additive"'),
        "salt_convex": ("auto_step_s0", 'SALT, automatic stop, kd_mix="convex" (default)'),
        "kd_all": ("kd_all", "KD for the whole run"),
    }
    teacher = load(results / "paper_regime" / corpus / "runs" / "teacher_half.json")
    kd_end = load(results / "paper_regime" / corpus / "runs" / "auto_additive_s0.json")["kd_steps"]
    curves = {key: run_curve(corpus, name, results) for key, (name, _) in runs.items()}
    steps, base = curves["baseline"]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, (_, label) in runs.items():
        xs, ys = curves[key]
        left.plot(xs, ys, color=COLOURS[key], label=label, lw=1.6)
        # right panel: the same curves minus the baseline's, where the differences are visible
        right.plot(xs, [y - b for y, b in zip(ys, base, strict=True)], color=COLOURS[key], lw=1.6)
    teacher_loss = teacher["final_test_loss"]
    label = f"teacher's final loss ({teacher_loss:.3f}; {teacher['params'] / 1e6:.2f}M parameters)"
    left.axhline(teacher_loss, color=TEACHER, ls="--", lw=1.2, label=label)
    left.set_ylim(1.2, 2.6)
    left.set_xlabel("optimizer step")
    left.set_ylabel("held-out test loss (nats / token)")
    left.set_title(
        f"A {load(results / 'paper_regime' / corpus / 'runs' / 'baseline_s0.json')['params'] / 1e6:.2f}M"
        f" student and a teacher half its size ({corpus}, seed 0)",
        fontsize=10,
    )
    left.legend(fontsize=8)
    right.axhline(0.0, color=COLOURS["baseline"], lw=1.0)
    right.axvline(kd_end, color="k", ls=":", lw=1.0)
    right.annotate(
        "KD stage ends\n(automatic stop)", (kd_end, 0.03), xytext=(6, 0), textcoords="offset points", fontsize=8
    )
    right.set_ylim(-0.2, 0.06)
    right.set_xlabel("optimizer step")
    right.set_ylabel("loss minus the baseline's (nats)")
    right.set_title("Below 0: ahead of the baseline", fontsize=10)
    right.grid(alpha=0.3)
    left.grid(alpha=0.3)
    assert steps == curves["kd_all"][0], "the runs are evaluated at the same steps"
    path = out / "fig1_curves.png"
    finish(fig, path)
    return path


def figure_scale(results: Path, out: Path) -> Path:
    """Figure 2: gain and steps-to-target against the student's size (python, a teacher about half the student's
    size, the automatic stop with kd_mix="additive")."""
    summary = load(results / "paper_regime" / "summary.json")["python"]
    rows = summary["scale_axis"]
    params = [row["student_params"] / 1e6 for row in rows]
    by_size = dict(zip([row["student"] for row in rows], params, strict=True))
    # every seed run at a size: the 0.47M student's from the three-seed block, the others' from their own rows
    seed_gains = {
        by_size["0.5m"]: [
            b - a
            for a, b in zip(
                summary["auto"]["final_loss"]["seeds"], summary["baseline_final_loss"]["seeds"], strict=True
            )
        ]
    }
    seed_budget = {by_size["0.5m"]: summary["auto"]["budget_to_target"]["seeds"]}
    for row, x in zip(rows, params, strict=True):
        if "gain_over_baseline_seeds" in row:
            seed_gains[x] = row["gain_over_baseline_seeds"]["seeds"]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.0))
    left.plot(params, [row["gain_over_baseline"] for row in rows], "o-", color=COLOURS["salt"], label="seed 0")
    label = "each seed"
    for x, gains in seed_gains.items():
        left.plot([x] * len(gains), gains, "x", color=COLOURS["salt"], ms=7, label=label)
        label = None
    left.axhline(0.0, color=COLOURS["baseline"], lw=1.0)
    left.set_ylabel("gain: baseline's final loss minus SALT's (nats)")
    left.set_title("Final-loss gain at full length", fontsize=10)

    series = {
        "budget-to-target, steps": ("budget_to_target", "o-", COLOURS["salt"]),
        "budget-to-target, wall-clock": ("budget_wallclock_to_target", "s--", COLOURS["salt_convex"]),
        "steps-to-target (read off the full-length curve)": ("steps_to_target_ratio", "^:", COLOURS["baseline"]),
    }
    for label, (key, style, colour) in series.items():
        xs = [x for row, x in zip(rows, params, strict=True) if row[key] is not None]
        right.plot(xs, [row[key] for row in rows if row[key] is not None], style, color=colour, label=label)
    for x, seeds in seed_budget.items():
        reached = [v for v in seeds if v is not None]
        right.plot([x] * len(reached), reached, "x", color=COLOURS["salt"], ms=7)
        if len(reached) < len(seeds):
            right.annotate(
                f"budget form: {len(reached)} of {len(seeds)} seeds reach it", (x, 0.93), fontsize=8, ha="center"
            )
    for row, x in zip(rows, params, strict=True):
        if row["budget_to_target"] is None and row["steps_to_target_ratio"] is None:
            right.annotate("not reached", (x, 1.03), ha="center", fontsize=8)
    right.axhline(1.0, color=COLOURS["baseline"], lw=1.0)
    right.axhline(0.70, color=TEACHER, ls="--", lw=1.0, label="the paper's 0.70 (a 2.8B student)")
    right.set_ylim(0.6, 1.08)
    right.set_ylabel("fraction of the baseline's steps / time")
    right.set_title("Reaching the full-length baseline's final loss (below 1: a saving)", fontsize=10)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(params, [f"{x:.2f}M" for x in params])
        ax.minorticks_off()
        ax.set_xlim(min(params) / 1.25, max(params) * 1.25)
        ax.set_xlabel("student parameters (teacher about half as large)")
        ax.legend(fontsize=8, loc="lower left" if ax is right else "upper left")
        ax.grid(alpha=0.3)
    path = out / "fig2_scale.png"
    finish(fig, path)
    return path


def figure_teacher_size(results: Path, out: Path) -> Path:
    """Teacher size (0.47M student, automatic stop, additive mix, seed 0) against the baselines' seed spread."""
    summary = load(results / "paper_regime" / "summary.json")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, corpus in zip(axes, ("python", "prose"), strict=True):
        rows = sorted(summary[corpus]["teacher_axis"], key=lambda row: row["ratio"])
        base = summary[corpus]["baseline_final_loss"]
        ratios = [row["ratio"] for row in rows]
        ax.axhspan(
            base["mean"] - base["std"],
            base["mean"] + base["std"],
            color=COLOURS["baseline"],
            alpha=0.15,
            label="baseline, mean +- std of 3 seeds",
        )
        ax.axhline(base["mean"], color=COLOURS["baseline"], lw=1.0)
        ax.plot(ratios, [row["final_test_loss"] for row in rows], "o-", color=COLOURS["salt"], label="SALT (seed 0)")
        for row in rows:
            ax.annotate(
                f"KD ended at {row['kd_steps'] / summary[corpus]['steps']:.0%}",
                (row["ratio"], row["final_test_loss"]),
                xytext=(4, 6),
                textcoords="offset points",
                fontsize=7,
            )
        ax.set_xlabel("teacher parameters / student parameters")
        ax.set_ylabel("final held-out test loss (nats)")
        ax.set_title(f"{corpus}: a 0.47M student, teachers of 1/8, 1/4, 1/2 its size", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    path = out / "fig3_teacher_size.png"
    finish(fig, path)
    return path


def figure_kd_end(results: Path, out: Path) -> Path:
    """The KD stage's end: the paper's convex mix against the additive mix, as the difference to the baseline."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, corpus in zip(axes, ("python", "prose"), strict=True):
        steps, base = run_curve(corpus, "baseline_s0", results)
        kd_end = load(results / "paper_regime" / corpus / "runs" / "auto_step_s0.json")["kd_steps"]
        for key, name, label in (
            ("salt_convex", "auto_step_s0", 'kd_mix="convex" (default, the paper\'s)'),
            ("salt", "auto_additive_s0", 'kd_mix="additive"'),
        ):
            xs, ys = run_curve(corpus, name, results)
            ax.plot(xs, [y - b for y, b in zip(ys, base, strict=True)], color=COLOURS[key], lw=1.6, label=label)
        ax.axhline(0.0, color=COLOURS["baseline"], lw=1.0)
        ax.axvline(kd_end, color="k", ls=":", lw=1.0, label="KD stage ends")
        ax.set_xlim(kd_end - 1200, kd_end + 1500)
        ax.set_ylim(-0.12, 0.08)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss minus the baseline's (nats)")
        ax.set_title(f"{corpus}, seed 0: SALT with the automatic stop", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    path = out / "fig4_kd_end.png"
    finish(fig, path)
    return path


def figure_teacher_strength(results: Path, out: Path) -> Path:
    """The regime study (benchmarks/regime/): the gain by teacher strength (a 1.87M student, one-layer teachers)."""
    summary = load(results / "regime" / "summary.json")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    width = 0.38
    for i, corpus in enumerate(("python", "prose")):
        rows = sorted(summary[corpus]["teacher_strength"], key=lambda row: row["teacher_params"])
        xs = [j + (i - 0.5) * width for j in range(len(rows))]
        ax.bar(xs, [row["gain_nats"] for row in rows], width, label=corpus, color=("#1f77b4", "#ff7f0e")[i])
        labels = [f"{row['teacher']}\n{row['teacher_params'] / 1e3:.0f}k" for row in rows]
    ax.set_xticks(range(len(labels)), labels)
    ax.axhline(0.0, color=COLOURS["baseline"], lw=1.0)
    ax.set_xlabel("teacher (parameters)")
    ax.set_ylabel("gain over the baseline (nats, seed 0)")
    run = summary["python"]["teacher_strength"][0]["run"]
    params = load(results / "regime" / "python" / "runs" / f"{run}.json")["params"]
    ax.set_title(f"A {params / 1e6:.2f}M student: the stronger the teacher, the larger the gain", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    path = out / "fig5_teacher_strength.png"
    finish(fig, path)
    return path


def figure_size_repetition(results: Path, out: Path) -> Path:
    """Figure 6: SALT's gain against the student's size at about one epoch and against the data's repetition at a
    fixed size (the size-against-repetition study, code corpus), with each arm's weight decay tuned on dev (solid,
    every seed marked) and with both at the recipe's 0.01 (dotted); the band is one seed noise either side of zero."""
    summary = load(results.parent / "size_repetition" / "results" / "summary.json")
    cells = [row for row in summary["cells"] if "gain" in row]
    noise = summary["seed_noise"] or 0.0
    fig, (size, repeat) = plt.subplots(1, 2, figsize=(11, 4.0))
    one_epoch = sorted((row for row in cells if row["repeats"] == 1), key=lambda row: row["student_params"])
    gain_lines(size, {"one epoch": one_epoch}, lambda row: row["student_params"] / 1e6, {"one epoch": COLOURS["salt"]})
    by_size: dict[str, list[dict]] = {}
    for row in sorted(cells, key=lambda row: row["repeats"]):
        by_size.setdefault(row["size"], []).append(row)
    colours = {"0.5m": COLOURS["salt_convex"], "1m": COLOURS["salt"], "2m": COLOURS["kd_all"]}
    gain_lines(
        repeat,
        {f"{k.upper()} student": v for k, v in by_size.items() if len(v) > 1},
        lambda row: row["repeats"],
        {f"{k.upper()} student": c for k, c in colours.items()},
    )
    for ax in (size, repeat):
        ax.axhspan(-noise, noise, color=COLOURS["baseline"], alpha=0.12, lw=0, label=f"seed noise ({noise:.3f})")
        ax.axhline(0.0, color=COLOURS["baseline"], lw=1.0)
        ax.set_ylabel("gain: baseline's final loss minus SALT's (nats)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    params = [row["student_params"] / 1e6 for row in one_epoch]
    size.set_xscale("log")
    size.set_xticks(params, [f"{x:.2f}M" for x in params])
    size.minorticks_off()
    size.set_xlim(0.35, 2.6)
    size.set_xlabel("student parameters (teacher about half as large), data seen about once")
    size.set_title("Student size", fontsize=10)
    repeat.set_xlabel("times the training data is seen (same steps)")
    repeat.set_title("Data repetition", fontsize=10)
    path = out / "fig6_size_repetition.png"
    finish(fig, path)
    return path


def gain_lines(ax, rows_by_line: dict, x, colours: dict) -> None:
    """Per line: the tuned gain's mean over seeds (solid) with each seed marked, and both arms at weight decay 0.01
    (seed 0, dotted)."""
    for label, rows in rows_by_line.items():
        xs = [x(row) for row in rows]
        colour = colours[label]
        ax.plot(xs, [row["gain"]["mean"] for row in rows], "o-", color=colour, label=f"{label}: both tuned")
        for xv, row in zip(xs, rows, strict=True):
            ax.plot([xv] * len(row["gain"]["seeds"]), row["gain"]["seeds"], "x", color=colour, ms=7)
        recipe = [(xv, row["gain_over_recipe_baseline"]) for xv, row in zip(xs, rows, strict=True)]
        recipe = [point for point in recipe if point[1] is not None]
        ax.plot(*zip(*recipe, strict=True), "s:", color=colour, alpha=0.7, label=f"{label}: both at wd 0.01")


FIGURES = (
    figure_curves,
    figure_scale,
    figure_teacher_size,
    figure_kd_end,
    figure_teacher_strength,
    figure_size_repetition,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="benchmarks' results folder (read only)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder the PNG files are written to")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for figure in FIGURES:
        print(figure(args.results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
