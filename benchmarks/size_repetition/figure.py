"""The study's figure (issue 31, point 4): SALT's gain and its budget-to-target against the student's size, one line
per repetition level; drawn from summary.json by summary.write_outputs (or `python figure.py` on the stored one)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def by_level(summary: dict, key, x: str = "student_params", line: str = "repeats") -> dict:
    """{line value: [(x value, value)]} for the cells where `key(row)` has a value, sorted by x: by default one line
    per repetition level against the student's size."""
    out: dict = {}
    for row in summary["cells"]:
        value = key(row)
        if value is not None and row.get(x):
            out.setdefault(row[line], []).append((row[x], value))
    return {k: sorted(points) for k, points in sorted(out.items())}


def mean(row: dict, key: str):
    return (row.get(key) or {}).get("mean")


def every_seed(row: dict, key: str):
    """The mean of a ratio over the seeds, where every seed reached the target (a mean over the seeds that did would
    hide one that never got there); None otherwise."""
    stats = row.get(key) or {}
    return stats.get("mean") if None not in stats.get("seeds", [None]) else None


def budget_every_seed(row: dict, key: str):
    """The budget form's `key` averaged over its seeds, where every seed reached the target; None otherwise."""
    values = [b[key] for b in (row.get("budget_by_seed") or {}).values()]
    return sum(values) / len(values) if values and None not in values else None


COLOURS = {1: "C0", 3.5: "C1", 8: "C2", "0.5m": "C0", "1m": "C1", "2m": "C2"}  # a level keeps its colour everywhere


def lines(ax, points_by_line: dict, style: str, label: str) -> None:
    """One line per key of `points_by_line`, coloured by the key (COLOURS), labelled by `label.format(key)`."""
    for k, points in points_by_line.items():
        ax.plot(*zip(*points, strict=True), style, color=COLOURS.get(k, "k"), label=label.format(k))


def spreads(ax, summary: dict, x: str, line: str) -> None:
    """Error bars of one standard deviation on the tuned gain, at the cells with two seeds or more."""
    stats = by_level(summary, lambda r: r["gain"] if len(r.get("seeds", ())) > 1 else None, x=x, line=line)
    for k, points in stats.items():
        for xv, g in points:
            ax.errorbar(xv, g["mean"], yerr=g["std"], color=COLOURS.get(k, "k"), capsize=4)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gain, budget, repeat) = plt.subplots(1, 3, figsize=(17, 4.8))
    lines(gain, by_level(summary, lambda row: mean(row, "gain")), "o-", "{:g}x, both tuned on dev")
    lines(
        gain,
        by_level(summary, lambda row: row.get("gain_over_recipe_baseline")),
        "x:",
        "{:g}x, both at wd 0.01 (seed 0)",
    )
    spreads(gain, summary, "student_params", "repeats")
    gain.set(xlabel="student parameters", ylabel="baseline final - SALT final (nats, test)")
    gain.set_title("gain against student size (bars: std over seeds)")
    # budget-to-target where every seed reached the target: the budget form (solid: steps, dashed: wall-clock) and
    # the full run's curve (dotted)
    steps = by_level(summary, lambda row: budget_every_seed(row, "budget_to_target"))
    lines(budget, steps, "o-", "{:g}x, budget form (steps)")
    wall = by_level(summary, lambda row: budget_every_seed(row, "budget_wallclock_to_target"))
    lines(budget, wall, "s--", "{:g}x, budget form (wall-clock)")
    curve = by_level(summary, lambda row: every_seed(row, "steps_to_target_ratio"))
    lines(budget, curve, "^:", "{:g}x, full run's curve (steps)")
    budget.axhline(1.0, color="grey", lw=0.8)
    budget.axhline(0.7, color="grey", lw=0.8, ls=":")
    budget.set(xlabel="student parameters", ylabel="fraction of the baseline's steps / time")
    budget.set_title("budget-to-target (tuned baseline's final; every seed reached)")
    for ax in (gain, budget):
        ax.set_xscale("log")
        ax.set_xlim(3e5, 3e6)
    # the repetition axis: one line per size, both tuned (solid) and both at the recipe's weight decay (dotted)
    tuned = by_level(summary, lambda row: mean(row, "gain"), x="repeats", line="size")
    lines(repeat, tuned, "o-", "{}, both tuned on dev")
    spreads(repeat, summary, "repeats", "size")
    recipe = by_level(summary, lambda row: row.get("gain_over_recipe_baseline"), x="repeats", line="size")
    lines(repeat, recipe, "x:", "{}, both at wd 0.01 (seed 0)")
    repeat.set(xlabel="times the data is seen", ylabel="baseline final - SALT final (nats, test)")
    repeat.set_title("gain against repetition (one line per student size)")
    for ax in (gain, repeat):
        ax.axhline(0, color="grey", lw=0.8)
    for ax in (gain, budget, repeat):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent / "results"
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "gain_by_size.png"
    plot(json.loads((root / "summary.json").read_text()), out)
