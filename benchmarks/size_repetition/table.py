"""The study's result table (issue 31), rendered from summary.json into the study README between two markers, so that
the table a reader sees is always the summary's: `summary.write_outputs` rewrites it with every committed run, and a
test checks the README against the committed summary."""

from __future__ import annotations

import re
from pathlib import Path

from runs import GOAL

README = Path(__file__).resolve().parent / "README.md"
BEGIN = "<!-- results table: written by size_repetition.py from results/summary.json; do not edit -->"
END = "<!-- end of results table -->"
HEADER = (
    "| cell | passes | teacher | baseline by weight decay (seed 0; dev's choice in bold) | SALT by weight decay "
    "(seed 0) | gain, both at wd 0.01 | gain, both tuned, per seed (baseline -> SALT) | steps / wall-clock to the "
    "tuned baseline's final, per seed | budget form: steps / wall-clock to it, per seed | KD stage end |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def loss(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.3f}"


def by_weight_decay(losses: dict, chosen) -> str:
    """'0.01: 1.3791 · **0.3: 1.3592**': each weight decay's final test loss, the dev half's choice in bold."""
    parts = [f"{wd}: {loss(v['test'])}" for wd, v in losses.items()]
    return " · ".join(f"**{p}**" if wd == f"{chosen:g}" else p for p, wd in zip(parts, losses, strict=True))


def ratio_pair(steps, wall) -> str:
    if steps is None:
        return "not reached"
    return f"{steps:.2f} / {'?' if wall is None else f'{wall:.2f}'}"


def per_seed(row: dict) -> tuple[str, str, str]:
    """The gain, the ratios read off the full-length curves and the budget form, each seed's separated by '; '."""
    gains, curves = [], []
    for i in range(len(row.get("seeds", []))):
        base, salt = row["baseline_final_loss"]["seeds"][i], row["auto_final_loss"]["seeds"][i]
        gains.append(f"{signed(row['gain']['seeds'][i])} ({loss(base)} -> {loss(salt)})")
        curves.append(
            ratio_pair(row["steps_to_target_ratio"]["seeds"][i], row["wallclock_to_target_ratio"]["seeds"][i])
        )
    budget = [
        ratio_pair(b["budget_to_target"], b["budget_wallclock_to_target"])
        for b in (row.get("budget_by_seed") or {}).values()
    ]
    return "; ".join(gains), "; ".join(curves), "; ".join(budget) or "not run"


def label(row: dict) -> str:
    return f"{row['size'].upper()}, {passes(row)}"


def table_row(row: dict) -> str:
    gains, curves, budget = per_seed(row)
    passes = "" if row.get("epochs") is None else f"{row['epochs']:.2f}"
    cells = [
        label(row),
        passes,
        loss(row["teacher_final_loss"]),
        by_weight_decay(row["baseline_by_weight_decay"], row.get("weight_decay")),
        by_weight_decay(row.get("salt_by_weight_decay", {}), row.get("salt_weight_decay")),
        signed(row.get("gain_over_recipe_baseline")),
        gains,
        curves,
        budget,
        ", ".join(f"{e:.2f}" for e in row.get("kd_stage_end", [])),
    ]
    return "| " + " | ".join(cells) + " |"


def mean_gain(row: dict) -> str:
    """The tuned gain's mean over seeds, with its standard deviation where there are two or more; 'to run' before."""
    gain = row.get("gain")
    if gain is None:
        return "to run"
    n = len(gain["seeds"])
    return signed(gain["mean"]) + (f" ± {gain['std']:.3f} ({n} seeds)" if n > 1 else "")


def axis(cells: list[dict], name) -> str:
    """'<name(c)> <tuned gain>, ...' over `cells`, and their gains both at the recipe's weight decay, the budget form
    (seed 0) and what tuning the weight decay alone gave the plain run."""
    parts = [
        "both tuned, mean over seeds: " + ", ".join(f"{name(c)} {mean_gain(c)}" for c in cells),
        "both at wd 0.01 (seed 0): "
        + ", ".join(f"{name(c)} {signed(c.get('gain_over_recipe_baseline')) or 'to run'}" for c in cells),
        "the tuned weight decay's gain to the plain run: "
        + ", ".join(f"{name(c)} {signed(c.get('tuned_weight_decay_gain')) or 'to run'}" for c in cells),
        "budget form to the tuned baseline's final, steps / wall-clock (seed 0): "
        + ", ".join(
            f"{name(c)} {ratio_pair(c['budget_to_target'], c['budget_wallclock_to_target'])}"
            for c in cells
            if "budget_to_target" in c
        ),
    ]
    return "; ".join(p for p in parts if not p.endswith(": "))


def passes(row: dict) -> str:
    return f"{row['repeats']:g}x"


def axes(summary: dict) -> list[str]:
    """The two axes of the issue, each a line of the figures its answer reads: the sizes at one epoch, and the
    repetition levels at each size that has more than one."""
    cells = summary["cells"]
    ones = sorted((c for c in cells if c["repeats"] == 1), key=lambda c: c.get("student_params") or 0)
    out = [f"- Size at about one epoch: {axis(ones, lambda c: c['size'].upper())}."] if ones else []
    for size in dict.fromkeys(c["size"] for c in cells):
        levels = sorted((c for c in cells if c["size"] == size), key=lambda c: c["repeats"])
        if len(levels) > 1:
            out.append(f"- Repetition at {size.upper()}: {axis(levels, passes)}.")
    return out


def render(summary: dict) -> str:
    """The table, one row per cell, the figures of each axis, the study's seed noise and where the goal holds."""
    rows = [table_row(r) for r in summary["cells"]]
    noise = summary.get("seed_noise")
    goal = {label(r): r["goal_met"] for r in summary["cells"] if r.get("goal_met") is not None}
    notes = [
        f"Seed noise (the chosen baselines' standard deviation over seeds, pooled): "
        f"{'not measured yet' if noise is None else f'{noise:.3f} nats'}.",
        f"The goal (the budget form at <= {GOAL['steps']:.2f} of the steps and <= {GOAL['wallclock']:.2f} of the "
        "wall-clock on every seed, two at least): "
        + ("; ".join(f"{c} {'met' if g else 'not met'}" for c, g in goal.items()) or "no cell with two seeds yet")
        + ".",
    ]
    return "\n".join([HEADER, *rows, "", *axes(summary), "", *notes])


def block(summary: dict) -> str:
    return f"{BEGIN}\n{render(summary)}\n{END}"


PATTERN = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)


def written(text: str) -> str | None:
    """The table block in a README's text; None where it has none."""
    found = PATTERN.search(text)
    return None if found is None else found.group(0)


def update(summary: dict, readme: Path = README) -> None:
    """Rewrite the README's table block from `summary` (a README without one is left as it is)."""
    text = readme.read_text()
    new = PATTERN.sub(lambda _: block(summary), text)
    if new != text:
        readme.write_text(new)
