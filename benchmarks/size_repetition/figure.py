"""The study's figure (issue 31, point 4): SALT's gain and its budget-to-target against the student's size, one line
per repetition level; drawn from summary.json by summary.write_outputs (or `python figure.py` on the stored one)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def by_level(summary: dict, key) -> dict[float, list[tuple[int, float]]]:
    """{repeats: [(student parameters, value)]} for the cells where `key(row)` has a value, sorted by size."""
    out: dict[float, list[tuple[int, float]]] = {}
    for row in summary["cells"]:
        value = key(row)
        if value is not None and row.get("student_params"):
            out.setdefault(row["repeats"], []).append((row["student_params"], value))
    return {r: sorted(points) for r, points in sorted(out.items())}


def mean(row: dict, key: str):
    return (row.get(key) or {}).get("mean")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gain, budget) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (r, points) in enumerate(by_level(summary, lambda row: mean(row, "gain")).items()):
        gain.plot(*zip(*points, strict=True), "o-", color=f"C{i}", label=f"data seen {r:g}x (SALT vs tuned baseline)")
    for i, (r, points) in enumerate(by_level(summary, lambda row: row.get("gain_over_recipe_baseline")).items()):
        gain.plot(*zip(*points, strict=True), "x:", color=f"C{i}", label=f"{r:g}x, vs weight decay 0.01")
    gain.axhline(0, color="grey", lw=0.8)
    gain.set(xscale="log", xlabel="student parameters", ylabel="baseline final - SALT final (nats, test)")
    gain.set_title("gain against student size")
    gain.legend(fontsize=8)
    # budget-to-target: the budget form where it ran (solid: steps, dashed: wall-clock), else the curve (dotted)
    for i, (r, points) in enumerate(by_level(summary, lambda row: row.get("budget_to_target")).items()):
        budget.plot(*zip(*points, strict=True), "o-", color=f"C{i}", label=f"{r:g}x, budget form (steps)")
    for i, (r, points) in enumerate(by_level(summary, lambda row: row.get("budget_wallclock_to_target")).items()):
        budget.plot(*zip(*points, strict=True), "s--", color=f"C{i}", label=f"{r:g}x, budget form (wall-clock)")
    for i, (r, points) in enumerate(by_level(summary, lambda row: mean(row, "steps_to_target_ratio")).items()):
        budget.plot(*zip(*points, strict=True), "^:", color=f"C{i}", label=f"{r:g}x, full run's curve (steps)")
    budget.axhline(1.0, color="grey", lw=0.8)
    budget.axhline(0.7, color="grey", lw=0.8, ls=":")
    budget.set(xscale="log", xlabel="student parameters", ylabel="fraction of the baseline's steps / time")
    budget.set_title("budget-to-target (the baseline's final test loss)")
    budget.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent / "results"
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "gain_by_size.png"
    plot(json.loads((root / "summary.json").read_text()), out)
