"""The runs of the size-against-repetition study (issue 31): its cells, their teachers, baselines and SALT runs, the
slices of the corpus that repeat, and where everything lives.

A cell is a student size and a repetition level. Every student trains TOKENS_PER_PARAM tokens per parameter in rows of
16 x 128 (section 8's recipe: AdamW 2e-3 cosine, 50 warm-up steps); at level 1 it draws them from the whole train
split (each token seen at most once), at level r from a slice of budget / r tokens, repeated r times. Each cell has
its own teacher (about half the student, smaller in width and depth), trained on the cell's data for the student's
steps as a finished model, as a user with only that data would have it. The plain baseline is run at each of
WEIGHT_DECAYS, widened while the largest wins on dev (the 2M cell: the recipe's and the one the 1M one-epoch cell
chose), and the one with the lowest final dev loss is the baseline (the test half reports); SALT runs at the recipe's
weight decay and, once the baselines chose another, at that one too (the 2M cell: at its baselines' two from the
start), and the dev half chooses between them the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench.py lives one folder up (benchmarks/ is not a package); importing it puts paper_regime/ on the path too.
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402
import torch  # noqa: E402
from bench import WORK, RunSpec  # noqa: E402
from paper_regime_runs import CHOSEN_END, W, scale_every  # noqa: E402

CORPUS = "code"  # code_corpus.py's folder under benchmarks/work
ROOT = HERE / "results"  # runs/ (one JSON per run), teachers/ (their weights), summary.json, the figure, step costs
RUNS = ROOT / "runs"
STEP_COST = ROOT / "step_cost.json"  # --step-cost, on an otherwise idle machine
RESUME = ROOT / "resume"  # --stash: the newest checkpoint of each unfinished run, committed (stash.py)
# student and teacher per size: the teacher 0.45-0.56 of the student's parameters, smaller in width and depth
SIZES = {"0.5m": ("4x96", "3x80"), "1m": ("5x128", "4x96"), "2m": ("6x160", "5x128")}
TOKENS_PER_PARAM = {"0.5m": 20, "1m": 20, "2m": 20}  # the 2M cell is the one to shrink if the plan is too long
REPEATS = {"0.5m": (1, 3.5), "1m": (1, 3.5, 8), "2m": (1,)}  # how often the cell's slice of the corpus is seen
WEIGHT_DECAYS = (0.01, 0.1, 0.3)  # the plain baseline's regularisation, chosen on dev; 0.01 is the recipe's
WIDER_DECAYS = (1.0, 3.0)  # added in turn while the grid's largest wins on dev by more than the seed noise
BUDGETS = (0.8, 0.7)  # the budget form: the automatic stop on a shortened run, its schedule fit to it
GOAL = {"steps": 0.70, "wallclock": 0.80}  # the goal for the budget form, on two seeds
SEED_NOISE = 0.012  # nats: section 8's baselines' spread over seeds (paper_regime/REPORT.md); see `seed_noise`
SAVE_EVERY, KEEP = 500, 2  # checkpoints (a run resumes from its newest complete one), how many are kept
SLICE_KEY = "size_repetition"  # salt of the rows' order that every slice is a prefix of


@cache
def params(model: str) -> int:
    return bench.build_model(model, 300, 128, 0).num_parameters()


def steps(size: str) -> int:
    """round(tokens per parameter x student parameters / tokens per step)."""
    return round(TOKENS_PER_PARAM[size] * params(SIZES[size][0]) / (bench.BATCH * 128))


def tag(repeats: float) -> str:
    return f"x{repeats:g}"


def teacher_name(size: str, repeats: float) -> str:
    """The teacher's folder under benchmarks/work/code/teachers (and its run is teacher_<this>)."""
    return f"sr_{size}_{tag(repeats)}"


def run_name(kind: str, size: str, repeats: float, wd: float | None = None, budget: float = 1.0, seed: int = 0) -> str:
    """teacher_<size>_x<r>, baseline_<size>_x<r>_wd<wd>, auto_<size>_x<r> (with _wd<wd> at a weight decay other than
    the recipe's), with _budget_<b> for a shortened run, and _s<k> for seed k > 0."""
    salt_wd = kind == "auto" and wd not in (None, bench.WEIGHT_DECAY)
    name = f"{kind}_{size}_{tag(repeats)}" + (f"_wd{wd:g}" if kind == "baseline" or salt_wd else "")
    return name + (f"_budget_{budget:g}" if budget != 1.0 else "") + (f"_s{seed}" if seed else "")


@dataclass
class Run:
    """A run of the study: its spec, and the cell and role it belongs to."""

    spec: RunSpec
    size: str
    repeats: float
    role: str  # teacher, baseline or auto
    budget: float = 1.0


def checkpointed(extra: dict) -> dict:
    return {**extra, "save_strategy": "steps", "save_steps": SAVE_EVERY, "save_total_limit": KEEP}


def teacher(size: str, repeats: float) -> Run:
    n = steps(size)
    spec = RunSpec(
        f"teacher_{teacher_name(size, repeats)}",
        model=SIZES[size][1],
        steps=n,
        group="teacher",
        extra=checkpointed(scale_every(n)),
    )
    return Run(spec, size, repeats, "teacher")


def baseline(size: str, repeats: float, wd: float = bench.WEIGHT_DECAY, seed: int = 0) -> Run:
    n = steps(size)
    extra = checkpointed({**scale_every(n), "weight_decay": wd})
    name = run_name("baseline", size, repeats, wd, seed=seed)
    return Run(RunSpec(name, SIZES[size][0], n, seed, group="baseline", extra=extra), size, repeats, "baseline")


def auto(size: str, repeats: float, budget: float = 1.0, seed: int = 0, wd: float = bench.WEIGHT_DECAY) -> Run:
    """The automatic stop with section 8's chosen end (CHOSEN_END: the additive mix) at w 0.5 and weight decay `wd`,
    on `budget` of the cell's steps (its schedule fit to them), evaluated on the full run's grid."""
    n = steps(size)
    end = dict(CHOSEN_END)
    schedule = end.pop("kd_schedule", "step")
    extra = checkpointed({**scale_every(n), "kd_steps": "auto", **end, "weight_decay": wd})
    group = "auto" if budget == 1.0 else "budget"
    spec = RunSpec(
        run_name("auto", size, repeats, wd, budget, seed),
        SIZES[size][0],
        round(n * budget),
        seed,
        teacher_name(size, repeats),
        W,
        None,
        schedule,
        group,
        extra,
    )
    return Run(spec, size, repeats, "auto", budget)


def cell(size: str, repeats: float, folder: Path = RUNS) -> list[Run]:
    """A cell in training order: its teacher, the baselines at each of its weight decays, then SALT at each of
    `salt_decays`."""
    base = [baseline(size, repeats, d) for d in decays(size, repeats, folder)]
    return [teacher(size, repeats), *base, *(auto(size, repeats, wd=d) for d in salt_decays(size, repeats, folder))]


def salt_decays(size: str, repeats: float, folder: Path = RUNS) -> tuple[float, ...]:
    """The weight decays SALT runs at: the recipe's, and the one the baselines chose where that is another (once they
    all ran); on the 2M cell (three hours a run) its baselines' two from the start, the larger first, so that the
    pair at the 1M one-epoch cell's choice trains side by side rather than one after the other."""
    if size == "2m":
        return tuple(sorted(decays(size, repeats, folder), reverse=True))
    wd = chosen_weight_decay(size, repeats, folder)
    return (bench.WEIGHT_DECAY,) if wd in (None, bench.WEIGHT_DECAY) else (bench.WEIGHT_DECAY, wd)


def decays(size: str, repeats: float, folder: Path = RUNS) -> tuple[float, ...]:
    """The weight decays a cell's baseline runs at: WEIGHT_DECAYS, widened by the next of WIDER_DECAYS while the
    largest so far has the lowest final dev loss by more than the seed noise (the best plain run is not at the edge
    of the grid); on the 2M cell (three hours a run) the recipe's and the one the 1M one-epoch cell chose on dev (the
    recipe's alone until it chose)."""
    if size == "2m":
        chosen = chosen_weight_decay("1m", 1, folder)
        return tuple(sorted({bench.WEIGHT_DECAY, chosen or bench.WEIGHT_DECAY}))
    grid = list(WEIGHT_DECAYS)
    for wider in WIDER_DECAYS:
        if not still_falling(size, repeats, grid, folder):
            break
        grid.append(wider)
    return tuple(grid)


def still_falling(size: str, repeats: float, grid: list[float], folder: Path) -> bool:
    """Whether the baseline at the grid's largest weight decay has the lowest final dev loss of the grid, lower than
    the next smaller one's by more than the seed noise (False while any of them has not run)."""
    dev = [stored_final(run_name("baseline", size, repeats, wd), folder, "dev") for wd in grid]
    if None in dev:
        return False
    return dev[-1] == min(dev) and dev[-2] - dev[-1] > SEED_NOISE


def stored_final(name: str, folder: Path, half: str = "test") -> float | None:
    """A stored run's final loss on the `half` ("test" or "dev"); None before it ran."""
    path = folder / f"{name}.json"
    return json.loads(path.read_text())[f"final_{half}_loss"] if path.is_file() else None


def chosen_baseline_final(size: str, repeats: float, folder: Path) -> float | None:
    """The final test loss of the cell's seed-0 baseline at the weight decay the dev half chose."""
    wd = chosen_weight_decay(size, repeats, folder)
    return None if wd is None else stored_final(run_name("baseline", size, repeats, wd), folder)


def salt_weight_decay(size: str, repeats: float, folder: Path) -> float | None:
    """The weight decay of the cell's stored seed-0 SALT run with the lowest final dev loss, among the recipe's and
    the one the baselines chose; None before those ran."""
    wd = chosen_weight_decay(size, repeats, folder)
    return None if wd is None else dev_choice("auto", size, repeats, {bench.WEIGHT_DECAY, wd}, folder)


def seed0_gain(size: str, repeats: float, folder: Path) -> float | None:
    """The chosen baseline's final test loss minus the chosen SALT run's (seed 0); None before both ran."""
    wd = salt_weight_decay(size, repeats, folder)
    base = chosen_baseline_final(size, repeats, folder)
    salt = None if wd is None else stored_final(run_name("auto", size, repeats, wd), folder)
    return None if base is None or salt is None else base - salt


def budget_runs(folder: Path = RUNS) -> list[Run]:
    """The budget form where the issue asks for it, from what is stored: 0.8 of the steps on the cells where SALT
    leads at full length and on the 2M cell, once both full-length runs ran; 0.7 where 0.8 reached the chosen
    baseline's final test loss. Invoked again as runs land, the group grows."""
    out = []
    for size in SIZES:
        for r in REPEATS[size]:
            gain = seed0_gain(size, r, folder)
            if gain is None or (gain <= 0 and size != "2m"):
                continue
            wd = salt_weight_decay(size, r, folder)
            out.append(auto(size, r, BUDGETS[0], wd=wd))
            short = stored_final(run_name("auto", size, r, wd, BUDGETS[0]), folder)
            if short is not None and short <= chosen_baseline_final(size, r, folder):
                out.append(auto(size, r, BUDGETS[1], wd=wd))
    return out


def seed_runs(seed: int = 1, folder: Path = RUNS) -> list[Run]:
    """A second seed of the baseline at the weight decay the dev half chose and of the automatic stop (the teacher
    stays the same) on the cells whose seed-0 gain lies within twice the seed noise (`seed_noise`) of zero; with the
    budget forms too on the cells `near_goal` (the goal asks for two seeds there)."""
    out, noise = [], seed_noise(folder)
    for size in SIZES:
        for r in REPEATS[size]:
            gain = seed0_gain(size, r, folder)
            if gain is None:
                continue
            base, salt = chosen_weight_decay(size, r, folder), salt_weight_decay(size, r, folder)
            pair = [baseline(size, r, base, seed), auto(size, r, seed=seed, wd=salt)]
            if near_goal(size, r, folder, noise):
                out += [*pair, *(auto(size, r, b, seed=seed, wd=salt) for b in BUDGETS)]
            elif abs(gain) < 2 * noise:
                out += pair
    return out


def seed_noise(folder: Path = RUNS) -> float:
    """The seed noise the choice of second seeds reads: the study's own (`own_seed_noise`) where that is larger than
    section 8's SEED_NOISE, else SEED_NOISE. The weight-decay grid's widening keeps SEED_NOISE, the value it was
    planned with."""
    return max(SEED_NOISE, own_seed_noise(folder) or 0.0)


def own_seed_noise(folder: Path = RUNS) -> float | None:
    """The study's own seed noise: the standard deviation of the chosen baselines' final test loss over seeds, pooled
    over the cells with two seeds or more (the root mean square of theirs); None before any cell has two."""
    stds = []
    for size in SIZES:
        for r in REPEATS[size]:
            wd = chosen_weight_decay(size, r, folder)
            seeds = [] if wd is None else [run_name("baseline", size, r, wd, seed=s) for s in (0, 1, 2)]
            finals = [f for n in seeds if (f := stored_final(n, folder)) is not None]
            if len(finals) > 1:
                stds.append(bench.seed_stats(finals)["std"])
    return math.sqrt(sum(x * x for x in stds) / len(stds)) if stds else None


def near_goal(size: str, repeats: float, folder: Path, noise: float = SEED_NOISE) -> bool:
    """Whether the cell's seed-0 budget form on the goal's fraction of the steps (BUDGETS[-1], 0.7) ended below the
    chosen baseline's final test loss or within twice the seed noise `noise` above it."""
    wd = salt_weight_decay(size, repeats, folder)
    short = stored_final(run_name("auto", size, repeats, wd, BUDGETS[-1]), folder)
    return short is not None and short - chosen_baseline_final(size, repeats, folder) < 2 * noise


def chosen_weight_decay(size: str, repeats: float, folder: Path = RUNS) -> float | None:
    """The weight decay of the stored seed-0 baseline with the lowest final DEV loss (never the test half); None
    before all of the cell's baselines ran."""
    return dev_choice("baseline", size, repeats, decays(size, repeats, folder), folder)


def dev_choice(kind: str, size: str, repeats: float, wds, folder: Path) -> float | None:
    """Among the seed-0 `kind` runs of a cell at the weight decays `wds`, the one with the lowest final dev loss;
    None while any of them has not run."""
    dev = {wd: stored_final(run_name(kind, size, repeats, wd), folder, "dev") for wd in sorted(wds)}
    return None if None in dev.values() else min(dev, key=dev.get)


def groups(folder: Path = RUNS) -> dict[str, list[Run]]:
    """The study's groups in the issue's order: the repetition axis at 1M (its level 1 is the size axis's 1M cell),
    the other sizes at level 1, the 0.5M student repeated; the budget forms and second seeds. What runs follows the
    runs stored in `folder` (the weight decays chosen, where SALT leads): called again as runs land, groups grow."""
    return {
        "rep_1m": [run for r in REPEATS["1m"] for run in cell("1m", r, folder)],
        "size": [*cell("0.5m", 1, folder), *cell("2m", 1, folder)],
        "rep_0.5m": [run for r in REPEATS["0.5m"] if r > 1 for run in cell("0.5m", r, folder)],
        "budget": budget_runs(folder),
        "seeds": seed_runs(1, folder),
    }


DEFAULT_GROUPS = ("rep_1m", "size", "rep_0.5m")  # what an invocation without --only trains


def every_run() -> dict[str, Run]:
    return {run.spec.name: run for g in groups().values() for run in g}


# ---- the data of a cell: a slice of the train split ---------------------------------------------------------------


def row_order(n: int) -> torch.Tensor:
    """The train split's row indices in a fixed pseudo-random order (sha256 of the index: the same on every machine
    and version); every slice is a prefix of it, so a smaller slice lies inside a larger one, and each covers every
    package of the corpus as the held-out halves do (the rows themselves follow the wheels' order)."""
    keys = [hashlib.sha256(f"{SLICE_KEY}/{i}".encode()).digest()[:8] for i in range(n)]
    return torch.tensor(sorted(range(n), key=keys.__getitem__))


def slice_rows(size: str, repeats: float, train_rows: int) -> torch.Tensor | None:
    """The training rows of a cell: None (the whole split) at level 1, else the first budget / repeats rows of
    `row_order`, sorted (the Trainer shuffles them)."""
    if repeats == 1:
        return None
    k = round(steps(size) * bench.BATCH / repeats)
    if k > train_rows:
        raise ValueError(f"a slice of {k} rows for {size} at {tag(repeats)}: the train split has {train_rows}")
    return row_order(train_rows)[:k].sort().values


def epochs(size: str, repeats: float, train_rows: int) -> float:
    """Passes over the cell's data: the student's rows over the rows it draws from."""
    rows = slice_rows(size, repeats, train_rows)
    return steps(size) * bench.BATCH / (train_rows if rows is None else rows.numel())


# ---- where things live --------------------------------------------------------------------------------------------


def run_dir(name: str) -> Path:
    return WORK / CORPUS / "size_repetition" / name


def stored_teacher(name: str) -> Path:
    """A trained teacher's weights in the repository (committed with its run), restored when the work folder lacks
    them."""
    return ROOT / "teachers" / name


COMMITTED_SHARD = "3MB"  # the repository keeps files under 4 MB: the 2M cell's teacher (1.04M fp32) is 4.2 MB


def commit_copy(trained: Path, folder: Path) -> None:
    """A trained teacher's weights, bit for bit, as save_pretrained shards small enough to commit (with their index
    where there is more than one); AutoModelForCausalLM reads the folder as it reads `trained`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32)
    model.save_pretrained(folder, max_shard_size=COMMITTED_SHARD)


def cost_pairs() -> dict[str, tuple[str, str]]:
    """(student, teacher) per size: the step costs the summary's wall-clock needs."""
    return dict(SIZES)
