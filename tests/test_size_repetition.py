"""The size-against-repetition study (issue 31, benchmarks/size_repetition/): its plan (sizes, teachers, slices of
the corpus), its summary step on small synthetic stored runs, and bench.train_run resuming an interrupted run to the
same result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from salt_hf.checkpointing import COMPLETE_MARKER

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "size_repetition")]

import bench  # noqa: E402  (script folders, put on the path above)
import figure  # noqa: E402
import runs  # noqa: E402
import size_repetition  # noqa: E402
import stash  # noqa: E402
import summary  # noqa: E402
import table  # noqa: E402

# ---- the plan ---------------------------------------------------------------------------------------------------


def widths_depths(size: str) -> tuple[int, int]:
    layers, width = size.split("x")
    return int(layers), int(width)


@pytest.mark.parametrize("size", list(runs.SIZES))
def test_each_teacher_is_about_half_its_student_and_smaller_in_width_and_depth(size):
    student, teacher = runs.SIZES[size]
    assert 0.45 <= runs.params(teacher) / runs.params(student) <= 0.56
    assert all(t < s for t, s in zip(widths_depths(teacher), widths_depths(student), strict=True))
    assert runs.steps(size) == round(runs.TOKENS_PER_PARAM[size] * runs.params(student) / 2048)


def test_slices_are_nested_sized_by_the_repetition_and_the_same_every_time():
    train_rows = 408_520
    assert runs.slice_rows("1m", 1, train_rows) is None  # the whole split
    x35, x8 = runs.slice_rows("1m", 3.5, train_rows), runs.slice_rows("1m", 8, train_rows)
    budget_rows = runs.steps("1m") * bench.BATCH
    assert x35.numel() == round(budget_rows / 3.5) and x8.numel() == round(budget_rows / 8)
    assert set(x8.tolist()) <= set(x35.tolist())  # a smaller slice lies inside a larger one
    assert torch.equal(x8, runs.slice_rows("1m", 8, train_rows))
    assert runs.epochs("1m", 8, train_rows) == pytest.approx(8, abs=1e-3)
    # spread over the whole split (every package), not its first rows
    assert x8.min() < train_rows * 0.01 and x8.max() > train_rows * 0.99


def test_run_names_are_unique_and_teachers_train_before_their_students(tmp_path):
    groups = runs.groups(tmp_path)  # nothing stored: the plan before any run
    names = [r.spec.name for g in ("rep_1m", "size", "rep_0.5m", "budget") for r in groups[g]]
    assert len(names) == len(set(names))
    rep = [r.spec.name for r in groups["rep_1m"]]
    for i, r in enumerate((1, 3.5, 8)):
        baselines = [f"baseline_1m_x{r:g}_wd{wd:g}" for wd in (0.01, 0.1, 0.3)]
        assert rep[5 * i : 5 * i + 5] == [f"teacher_sr_1m_x{r:g}", *baselines, f"auto_1m_x{r:g}"]
    # the 2M cell runs the recipe's weight decay alone until the 1M one-epoch cell chose one
    assert [r.spec.name for r in groups["size"] if r.size == "2m"] == [
        "teacher_sr_2m_x1",
        "baseline_2m_x1_wd0.01",
        "auto_2m_x1",
    ]
    every = [r for g in groups.values() for r in g]
    assert all(r.spec.extra["save_strategy"] == "steps" for r in every)
    # the pool's choice, finishing runs in the order they started: a student never starts before its teacher ends
    for parallel in (1, 2, 3, 5):
        pending, busy, trained, started = list(groups["rep_1m"]), [], set(), []
        while pending or busy:
            while len(busy) < parallel and (run := size_repetition.ready(pending, busy)) is not None:
                assert run.role != "auto" or run.spec.teacher in trained
                pending.remove(run)
                busy.append(run)
                started.append(run.spec.name)
            finished = busy.pop(0)
            trained |= {finished.spec.name.removeprefix("teacher_")} if finished.role == "teacher" else set()
        assert sorted(started) == sorted(rep)
        # a sixth slot skips the student whose teacher is still training and takes the next cell's teacher
        if parallel < 5:
            assert started[:parallel] == rep[:parallel]
    pending, busy = list(groups["rep_1m"]), []
    while len(busy) < 6 and (run := size_repetition.ready(pending, busy)) is not None:
        pending.remove(run)
        busy.append(run)
    assert [r.spec.name for r in busy] == [*rep[:4], "teacher_sr_1m_x3.5", *rep[6:7]]


def test_only_refuses_an_unknown_name():
    with pytest.raises(SystemExit, match="neither a group"):
        size_repetition.named_runs(["rep_1m", "no_such_run"])
    assert [r.spec.name for r in size_repetition.named_runs(["auto_1m_x1", "auto_1m_x1"])] == ["auto_1m_x1"]


# ---- the summary on stored JSON --------------------------------------------------------------------------------


def stored(
    folder: Path, name: str, curve: list[tuple[int, float]], dev: float, *, steps=1000, kd_steps=0, wd=None, log=()
):
    model = "4x96" if name.startswith("teacher") else "5x128"
    extra = {} if wd is None else {"weight_decay": wd}
    spec = bench.RunSpec(name, model=model, steps=steps, extra=extra)
    result = bench.RunResult(
        spec=spec,
        corpus="code",
        device="cpu",
        params=472032 if name.startswith("teacher") else 1043328,
        kd_steps=kd_steps,
        curve_step_test_dev=[[s, t, t] for s, t in curve[:-1]] + [[*curve[-1], dev]],
        final_test_loss=curve[-1][1],
        final_dev_loss=dev,
        train_wall_s=1.0,
        step_times_s=[0.001] * steps,
        median_kd_step_s=None,
        median_plain_step_s=0.001,
        train_log=list(log),
    )
    result.save(folder / "runs" / f"{name}.json")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    falling = [(100, 2.0), (500, 1.4), (700, 1.19), (1000, 1.15)]  # SALT: at the chosen baseline's final at 700
    stored(tmp_path, "teacher_sr_1m_x3.5", [(500, 1.5), (1000, 1.3)], 1.3)
    stored(tmp_path, "baseline_1m_x3.5_wd0.01", [(300, 1.5), (700, 1.19), (1000, 1.20)], 1.18, wd=0.01)  # rose late
    log = [{"loss": 2.0}] * 5 + [{"loss": 1.0}] * 20 + [{"train_runtime": 9.0}]  # the last 20 losses: 1.0
    stored(tmp_path, "baseline_1m_x3.5_wd0.1", [(300, 1.5), (1000, 1.19)], 1.17, wd=0.1, log=log)  # the best on dev
    stored(tmp_path, "baseline_1m_x3.5_wd0.3", [(300, 1.5), (1000, 1.18)], 1.19, wd=0.3)  # best on test: not chosen
    stored(tmp_path, "auto_1m_x3.5", falling, 1.14, kd_steps=500)
    # SALT at the weight decay the baselines chose: worse on dev, so the recipe's stays SALT's
    stored(tmp_path, "auto_1m_x3.5_wd0.1", [(500, 1.4), (1000, 1.16)], 1.145, kd_steps=500, wd=0.1)
    stored(tmp_path, "auto_1m_x3.5_budget_0.8", [(800, 1.18)], 1.17, steps=800, kd_steps=400)
    stored(tmp_path, "auto_1m_x3.5_budget_0.7", [(700, 1.21)], 1.20, steps=700, kd_steps=350)
    stored(tmp_path, "baseline_1m_x1_wd0.01", [(1000, 1.30)], 1.29, wd=0.01)  # a cell whose SALT run is not done
    return tmp_path


def test_summary_chooses_the_weight_decay_on_dev_and_measures_gain_and_budget(results):
    out = summary.summarise(results / "runs", results / "step_cost.json")
    cells = {c["cell"]: c for c in out["cells"]}
    assert set(cells) == {"1m_x1", "1m_x3.5"}  # cells without a stored run are left out
    row = cells["1m_x3.5"]
    assert row["weight_decay"] == 0.1 and row["weight_decays_run"] == [0.01, 0.1, 0.3]
    assert row["salt_weight_decay"] == 0.01 and row["salt_by_weight_decay"]["0.1"]["dev"] == 1.145
    by_wd = row["baseline_by_weight_decay"]
    assert by_wd["0.1"] == {"test": 1.19, "dev": 1.17, "train_end": 1.0, "lowest_test_step": 1000}
    assert by_wd["0.01"]["lowest_test_step"] == 700 and by_wd["0.01"]["train_end"] is None  # no log stored
    assert row["gain_untuned_salt"] == pytest.approx(0.04)
    assert row["baseline_final_loss"]["seeds"] == [1.19]
    assert row["gain"]["mean"] == pytest.approx(0.04)
    assert row["gain_over_recipe_baseline"] == pytest.approx(0.05)  # against weight decay 0.01's 1.20
    assert row["tuned_weight_decay_gain"] == pytest.approx(0.01)
    assert row["steps_to_target_ratio"]["seeds"] == [0.7]
    assert row["wallclock_to_target_ratio"]["seeds"] == [None]  # no step costs measured yet
    assert row["kd_steps"] == [500] and row["kd_stage_end"] == [0.5]
    assert row["epochs"] == pytest.approx(3.5, abs=1e-3) and row["teacher_final_loss"] == 1.3
    # the budget form: 0.7 ends 0.02 above the target 1.19, 0.8 0.01 below it
    assert row["budget_finals"] == {"0.8": 1.18, "0.7": 1.21}
    assert row["budget_to_target"] == pytest.approx(0.7 + 0.1 * 0.02 / 0.03)
    assert "gain" not in cells["1m_x1"] and cells["1m_x1"]["baseline_final_loss"]["seeds"] == [1.30]


def test_a_second_seed_joins_the_cell_and_measures_the_studys_own_seed_noise(results):
    assert summary.summarise(results / "runs", results / "step_cost.json")["seed_noise"] is None  # one seed
    stored(results, "baseline_1m_x3.5_wd0.1_s1", [(300, 1.5), (1000, 1.21)], 1.18, wd=0.1)
    stored(results, "auto_1m_x3.5_s1", [(500, 1.4), (1000, 1.18)], 1.16, kd_steps=500)
    out = summary.summarise(results / "runs", results / "step_cost.json")
    row = {c["cell"]: c for c in out["cells"]}["1m_x3.5"]
    assert row["seeds"] == [0, 1] and row["baseline_final_loss"]["seeds"] == [1.19, 1.21]
    assert row["gain"]["seeds"] == pytest.approx([0.04, 0.03])
    assert out["seed_noise"] == pytest.approx(0.02 / 2**0.5)  # the standard deviation of 1.19 and 1.21
    assert row["budget_by_seed"].keys() == {"0"} and row["goal_met"] is False  # seed 0: 0.77 of the steps
    stored(results, "auto_1m_x3.5_budget_0.8_s1", [(800, 1.20)], 1.19, steps=800, kd_steps=400)
    stored(results, "auto_1m_x3.5_budget_0.7_s1", [(700, 1.22)], 1.21, steps=700, kd_steps=350)
    row = {c["cell"]: c for c in summary.summarise(results / "runs")["cells"]}["1m_x3.5"]
    assert row["budget_by_seed"]["1"]["budget_finals"] == {"0.8": 1.20, "0.7": 1.22}
    # against seed 1's own baseline, 1.21: halfway between 0.7's 1.22 and 0.8's 1.20
    assert row["budget_by_seed"]["1"]["budget_to_target"] == pytest.approx(0.75)
    assert row["budget_to_target"] == row["budget_by_seed"]["0"]["budget_to_target"]


def test_the_figure_draws_a_ratio_only_where_every_seed_reached_the_target():
    row = {
        "steps_to_target_ratio": {"mean": 0.66, "seeds": [0.66, None]},
        "budget_by_seed": {"0": {"budget_to_target": 0.72}, "1": {"budget_to_target": None}},
    }
    assert figure.every_seed(row, "steps_to_target_ratio") is None  # the mean of the seeds that reached: hidden
    assert figure.budget_every_seed(row, "budget_to_target") is None
    row["steps_to_target_ratio"]["seeds"][1] = 0.70
    row["budget_by_seed"]["1"]["budget_to_target"] = 0.78
    assert figure.every_seed(row, "steps_to_target_ratio") == 0.66  # the summary's mean
    assert figure.budget_every_seed(row, "budget_to_target") == pytest.approx(0.75)


def test_the_goal_holds_on_every_seed_two_at_least():
    def seed(steps, wall):
        return {"budget_to_target": steps, "budget_wallclock_to_target": wall}

    assert summary.goal_met([seed(0.69, 0.79)]) is None  # one seed: not decided
    assert summary.goal_met([seed(0.69, 0.79), seed(0.70, 0.80)]) is True
    assert summary.goal_met([seed(0.69, 0.79), seed(0.69, 0.81)]) is False  # the wall-clock misses on seed 1
    assert summary.goal_met([seed(None, None)]) is False  # never reached
    assert summary.goal_met([seed(0.69, None)]) is False  # no step costs measured: not shown


def test_budget_and_second_seeds_follow_the_stored_runs(results):
    folder = results / "runs"

    def names(found):
        return sorted(r.spec.name for r in found)

    # 1m_x3.5: SALT leads by 0.04 (over twice the seed noise) and 0.8 of the steps reached the chosen baseline's
    # 1.19, so 0.7 runs too; 1m_x1 has no SALT run yet: nothing
    assert names(runs.budget_runs(folder)) == ["auto_1m_x3.5_budget_0.7", "auto_1m_x3.5_budget_0.8"]
    # 0.7 of the steps missed the target by 0.02, within twice the seed noise: a second seed of the cell's runs
    near = ["auto_1m_x3.5_budget_0.7_s1", "auto_1m_x3.5_budget_0.8_s1", "auto_1m_x3.5_s1", "baseline_1m_x3.5_wd0.1_s1"]
    assert names(runs.seed_runs(1, folder)) == near
    stored(results, "auto_1m_x3.5_budget_0.7", [(700, 1.22)], 1.21, steps=700, kd_steps=350)  # 0.03 above: too far
    assert runs.seed_runs(1, folder) == []
    # 1m_x1: its weight decays chosen (the recipe's, on dev), then SALT leads by 0.01: within the noise
    stored(results, "baseline_1m_x1_wd0.1", [(1000, 1.29)], 1.295, wd=0.1)
    assert runs.budget_runs(folder) and runs.chosen_weight_decay("1m", 1, folder) is None  # wd 0.3 still to run
    stored(results, "baseline_1m_x1_wd0.3", [(1000, 1.31)], 1.30, wd=0.3)
    assert runs.chosen_weight_decay("1m", 1, folder) == 0.01
    stored(results, "auto_1m_x1", [(1000, 1.29)], 1.28, kd_steps=500)
    assert "auto_1m_x1_budget_0.8" in names(runs.budget_runs(folder))
    assert names(runs.seed_runs(1, folder)) == ["auto_1m_x1_s1", "baseline_1m_x1_wd0.01_s1"]
    stored(results, "auto_1m_x1_budget_0.8", [(800, 1.31)], 1.30, steps=800, kd_steps=400)  # misses 1.30
    assert "auto_1m_x1_budget_0.7" not in names(runs.budget_runs(folder))


def test_second_seeds_read_the_studys_own_seed_noise_where_it_is_larger(results):
    folder = results / "runs"
    stored(results, "auto_1m_x3.5_budget_0.7", [(700, 1.22)], 1.21, steps=700, kd_steps=350)  # 0.03 above 1.19
    assert runs.seed_noise(folder) == runs.SEED_NOISE and runs.seed_runs(1, folder) == []  # 0.04 and 0.03: too far
    # a second seed of the chosen baseline ends 0.06 from the first: a standard deviation of 0.042 nats
    stored(results, "baseline_1m_x3.5_wd0.1_s1", [(1000, 1.25)], 1.24, wd=0.1)
    assert runs.seed_noise(folder) == pytest.approx(0.06 / 2**0.5)
    near = ["auto_1m_x3.5_budget_0.7_s1", "auto_1m_x3.5_budget_0.8_s1", "auto_1m_x3.5_s1", "baseline_1m_x3.5_wd0.1_s1"]
    assert sorted(r.spec.name for r in runs.seed_runs(1, folder)) == near  # the gain and the 0.7 run now within it
    # the grid's widening keeps the planned noise: 0.3 best on dev by 0.02 still widens it
    for wd, dev in ((0.01, 1.45), (0.1, 1.42), (0.3, 1.40)):
        stored(results, f"baseline_1m_x8_wd{wd:g}", [(1000, dev)], dev, wd=wd)
    assert 1.0 in runs.decays("1m", 8, folder)


def test_salt_at_the_chosen_weight_decay_joins_the_cell_and_the_dev_half_chooses_it(results):
    folder = results / "runs"
    cell = [r.spec.name for r in runs.cell("1m", 3.5, folder)]
    assert cell[-2:] == ["auto_1m_x3.5", "auto_1m_x3.5_wd0.1"]  # the baselines chose 0.1 on dev
    assert runs.auto("1m", 3.5, wd=0.1).spec.extra["weight_decay"] == 0.1
    assert runs.salt_weight_decay("1m", 3.5, folder) == 0.01  # the wd 0.1 SALT run is worse on dev
    stored(results, "auto_1m_x3.5_wd0.1", [(500, 1.38), (700, 1.18), (1000, 1.12)], 1.13, kd_steps=500, wd=0.1)
    assert runs.salt_weight_decay("1m", 3.5, folder) == 0.1
    budget = sorted(r.spec.name for r in runs.budget_runs(folder))
    assert budget == ["auto_1m_x3.5_wd0.1_budget_0.8"]  # its own 0.8 has not run: 0.7 waits
    assert runs.budget_runs(folder)[0].spec.extra["weight_decay"] == 0.1
    row = {c["cell"]: c for c in summary.summarise(folder, results / "step_cost.json")["cells"]}["1m_x3.5"]
    assert row["salt_weight_decay"] == 0.1
    assert row["gain"]["seeds"] == [pytest.approx(0.07)]  # 1.19 (baseline at 0.1) - 1.12
    assert row["gain_untuned_salt"] == pytest.approx(0.04) and row["gain_over_recipe_baseline"] == pytest.approx(0.05)
    assert "budget_finals" not in row  # the 0.01 run's budget forms are not this SALT's


def test_the_2m_cell_tunes_at_the_weight_decay_the_1m_one_epoch_cell_chose(tmp_path):
    folder = tmp_path / "runs"
    assert runs.decays("2m", 1, folder) == (0.01,)
    for wd, dev in ((0.01, 1.30), (0.1, 1.29), (0.3, 1.28)):
        stored(tmp_path, f"baseline_1m_x1_wd{wd:g}", [(1000, dev)], dev, wd=wd)
    assert runs.decays("2m", 1, folder) == (0.01, 0.3)
    assert runs.decays("1m", 1, folder) == runs.decays("0.5m", 3.5, folder) == runs.WEIGHT_DECAYS
    names = [r.spec.name for r in runs.cell("2m", 1, folder)]
    # SALT at 0.3 beside its baseline, before the baselines chose: the larger weight decay first
    assert names[3:] == ["auto_2m_x1_wd0.3", "auto_2m_x1"]
    assert names[:3] == ["teacher_sr_2m_x1", "baseline_2m_x1_wd0.01", "baseline_2m_x1_wd0.3"]
    assert runs.chosen_weight_decay("2m", 1, folder) is None
    assert runs.cell("1m", 1, folder)[-1].spec.name == "auto_1m_x1_wd0.3"


def test_the_grid_widens_while_its_largest_weight_decay_still_wins_on_dev(tmp_path):
    folder = tmp_path / "runs"
    for wd, dev in ((0.01, 1.45), (0.1, 1.42), (0.3, 1.39)):  # 0.3 best on dev by 0.03, over the seed noise
        stored(tmp_path, f"baseline_1m_x8_wd{wd:g}", [(1000, dev)], dev, wd=wd)
    assert runs.decays("1m", 8, folder) == (0.01, 0.1, 0.3, 1.0)
    assert runs.chosen_weight_decay("1m", 8, folder) is None  # 1.0 has not run: nothing chosen yet
    assert "baseline_1m_x8_wd1" in [r.spec.name for r in runs.cell("1m", 8, folder)]
    stored(tmp_path, "baseline_1m_x8_wd1", [(1000, 1.38)], 1.36, wd=1.0)  # better by 0.03 again: 3.0 too
    assert runs.decays("1m", 8, folder) == (0.01, 0.1, 0.3, 1.0, 3.0)
    stored(tmp_path, "baseline_1m_x8_wd3", [(1000, 1.40)], 1.37, wd=3.0)  # worse: the grid stops, 1.0 chosen
    assert runs.decays("1m", 8, folder) == (0.01, 0.1, 0.3, 1.0, 3.0)
    assert runs.chosen_weight_decay("1m", 8, folder) == 1.0
    assert runs.cell("1m", 8, folder)[-1].spec.name == "auto_1m_x8_wd1"
    # the largest best by less than the seed noise (0.012): the grid stays as it is
    for wd, dev in ((0.01, 1.30), (0.1, 1.29), (0.3, 1.28)):
        stored(tmp_path, f"baseline_1m_x3.5_wd{wd:g}", [(1000, dev)], dev, wd=wd)
    assert runs.decays("1m", 3.5, folder) == runs.WEIGHT_DECAYS and runs.chosen_weight_decay("1m", 3.5, folder) == 0.3


def test_pending_draws_the_runs_again_from_what_is_stored(results, monkeypatch):
    monkeypatch.setattr(size_repetition, "RUNS", results / "runs")
    monkeypatch.setattr(size_repetition, "groups", lambda: runs.groups(results / "runs"))
    todo = [r.spec.name for r in size_repetition.pending(["rep_1m"], [])]
    assert "auto_1m_x3.5" not in todo and "teacher_sr_1m_x1" in todo  # stored runs are skipped
    busy = size_repetition.named_runs(["teacher_sr_1m_x1"])
    assert "teacher_sr_1m_x1" not in [r.spec.name for r in size_repetition.pending(["rep_1m"], busy)]
    for wd, dev in ((0.1, 1.295), (0.3, 1.285)):
        stored(results, f"baseline_1m_x1_wd{wd:g}", [(1000, dev)], dev, wd=wd)
    assert "auto_1m_x1_wd0.3" in [r.spec.name for r in size_repetition.pending(["rep_1m"], busy)]
    # a run with a complete checkpoint to resume from goes first; an incomplete checkpoint does not count
    monkeypatch.setattr(size_repetition, "run_dir", lambda name: results / "work" / name)
    todo = [r.spec.name for r in size_repetition.pending(["rep_1m"], busy)]
    assert todo.index("auto_1m_x8") > 0
    half_done = results / "work" / "auto_1m_x8" / "checkpoint-500"
    half_done.mkdir(parents=True)
    (half_done / "model.safetensors").write_bytes(b"1234")
    assert [r.spec.name for r in size_repetition.pending(["rep_1m"], busy)] == todo  # no marker: not complete
    (half_done / COMPLETE_MARKER).write_text(json.dumps({"files": {"model.safetensors": 4}}))
    again = [r.spec.name for r in size_repetition.pending(["rep_1m"], busy)]
    assert again == ["auto_1m_x8", *(n for n in todo if n != "auto_1m_x8")]


def test_summary_weighs_wall_clock_at_the_measured_step_costs_and_draws_the_figure(results):
    costs = {"1m": {"plain_step_s": 1.0, "kd_fused_step_s": 1.5, "plain_fused_step_s": 1.0}}
    (results / "step_cost.json").write_text(json.dumps(costs))
    paths = summary.write_outputs(results)
    assert [p.name for p in paths] == ["summary.json", summary.FIGURE.name] and paths[1].stat().st_size > 0
    row = {c["cell"]: c for c in json.loads(paths[0].read_text())["cells"]}["1m_x3.5"]
    # 500 KD steps at 1.5 and 200 more at 1.0, over the baseline's 1,000 at 1.0
    assert row["wallclock_to_target_ratio"]["seeds"] == [pytest.approx(0.95)]
    assert row["budget_wallclock_to_target"] is not None


def test_summarise_only_reproduces_the_committed_summary():
    committed = runs.ROOT / "summary.json"
    if not committed.is_file():
        pytest.skip("no runs of the study committed yet")
    assert json.loads(json.dumps(summary.summarise())) == json.loads(committed.read_text())
    # the study README's table is the committed summary's, as written with every committed run
    assert table.written(table.README.read_text()) == table.block(json.loads(committed.read_text()))


def test_the_readme_table_is_rewritten_from_the_summary_and_nothing_else(results):
    costs = {"1m": {"plain_step_s": 1.0, "kd_fused_step_s": 1.5, "plain_fused_step_s": 1.0}}
    (results / "step_cost.json").write_text(json.dumps(costs))
    stored(results, "baseline_1m_x3.5_wd0.1_s1", [(300, 1.5), (1000, 1.21)], 1.18, wd=0.1)
    stored(results, "auto_1m_x3.5_s1", [(500, 1.4), (1000, 1.18)], 1.16, kd_steps=500)
    readme = results / "README.md"
    readme.write_text(f"# Study\n\nBefore.\n\n{table.BEGIN}\nstale\n{table.END}\n\nAfter.\n")
    paths = summary.write_outputs(results, readme)
    assert paths[-1] == readme
    text = readme.read_text()
    assert text.startswith("# Study\n\nBefore.\n\n") and text.endswith("\n\nAfter.\n") and "stale" not in text
    rows = {line.split(" | ")[0]: line.split(" | ") for line in text.splitlines() if line.startswith("| 1M")}
    x35 = rows["| 1M, 3.5x"]
    assert x35[3] == "0.01: 1.2000 · **0.1: 1.1900** · 0.3: 1.1800"  # the dev half's choice, not the test's best
    assert x35[4] == "**0.01: 1.1500** · 0.1: 1.1600"
    assert x35[5] == "+0.050"  # both at the recipe's weight decay
    assert x35[6] == "+0.040 (1.1900 -> 1.1500); +0.030 (1.2100 -> 1.1800)"
    # seed 1 first evaluates at or below its baseline's 1.21 at step 1,000: 500 KD steps at 1.5, 500 plain at 1.0
    assert x35[7] == "0.70 / 0.95; 1.00 / 1.25"
    assert rows["| 1M, 1x"][6] == "" and rows["| 1M, 1x"][8] == "not run"  # no SALT run yet
    assert "Seed noise (the chosen baselines' standard deviation over seeds, pooled): 0.014 nats." in text
    assert "1M, 3.5x not met" in text  # seed 0's budget form needs 0.77 of the steps
    # each axis's figures: no cell at one epoch has SALT yet, the 1M repetition levels do
    assert (
        "- Size at about one epoch: both tuned, mean over seeds: 1M to run; both at wd 0.01 (seed 0): 1M to run;"
        in text
    )
    assert "- Repetition at 1M: both tuned, mean over seeds: 1x to run, 3.5x +0.035 ± 0.007 (2 seeds);" in text
    assert "the tuned weight decay's gain to the plain run: 1x +0.000, 3.5x +0.010;" in text  # 1x: 0.01 alone ran
    plain = results / "plain.md"
    plain.write_text("no table here\n")
    assert summary.write_outputs(results, plain)[-1] != plain and plain.read_text() == "no table here\n"


# ---- bench.train_run resumes an interrupted run ---------------------------------------------------------------


@pytest.mark.parametrize("via_stash", [False, True], ids=["work-folder", "committed-stash"])
def test_a_resumed_run_ends_as_the_uninterrupted_one(tmp_path, monkeypatch, via_stash):
    monkeypatch.setattr(bench, "WORK", tmp_path)
    corpus = tmp_path / "tiny"
    corpus.mkdir()
    g = torch.Generator().manual_seed(0)
    # rows that count up from a random start (mod 64): something to learn
    counting = (torch.randint(0, 64, (80, 1), generator=g) + torch.arange(16)) % 64
    torch.save(counting[:64].to(torch.int16), corpus / "train.pt")
    torch.save(counting[64:].to(torch.int16), corpus / "validation.pt")
    (corpus / "info.json").write_text(json.dumps({"vocab": 64, "seq_length": 16}))
    extra = {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "eval_steps": 5, "logging_steps": 1}
    extra |= {"save_strategy": "steps", "save_steps": 5, "warmup_steps": 0, "learning_rate": 1e-2}
    spec = bench.RunSpec("r", model="1x16", steps=10, extra=extra)
    rows = torch.arange(0, 64, 2)  # a slice: half the rows, 8 steps an epoch (the resumed part crosses into a second)
    whole = bench.train_run(spec, "tiny", "cpu", tmp_path / "a", threads=1, rows=rows, resume=True)
    bench.train_run(spec, "tiny", "cpu", tmp_path / "b", threads=1, rows=rows, resume=True)
    shutil.rmtree(tmp_path / "b" / "checkpoint-10")  # as if killed after the save at step 5
    if via_stash:  # the session ended: its checkpoint committed in parts, the work folder gone with the machine
        assert stash.stash(tmp_path / "a" / "none", tmp_path / "stash") is None  # nothing to stash
        stashed = stash.stash(tmp_path / "b", tmp_path / "stash", part_bytes=4096)
        assert stashed == tmp_path / "stash" / "checkpoint-5"
        parts = [p for p in stashed.rglob("*") if p.is_file()]
        assert all(".part" in p.name and p.stat().st_size <= 4096 for p in parts)
        assert any(p.name.endswith(".part01") for p in parts)  # the weights were cut
        shutil.rmtree(tmp_path / "b")
        assert stash.unstash(tmp_path / "stash", tmp_path / "b") == str(tmp_path / "b" / "checkpoint-5")
        assert stash.unstash(tmp_path / "stash", tmp_path / "b") == str(tmp_path / "b" / "checkpoint-5")  # once
    resumed = bench.train_run(spec, "tiny", "cpu", tmp_path / "b", threads=1, rows=rows, resume=True)
    flat = [[v for row in r.curve_step_test_dev for v in row] for r in (whole, resumed)]
    assert flat[0] == pytest.approx(flat[1], abs=1e-6)
    assert flat[0][-2] < flat[0][1] - 0.05  # it learnt: the comparison is not of two untrained models
    assert len(resumed.step_times_s) == 10
    assert {"resumed_at_step": 5, "step": 5} in resumed.train_log
    losses = [[h["loss"] for h in r.train_log if "loss" in h] for r in (whole, resumed)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_a_committed_teacher_is_shards_under_4_mb_with_the_same_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    trained = bench.build_model(runs.SIZES["2m"][1], 300, 128, 0)  # the 2M cell's teacher: 4.2 MB in one file
    trained.save_pretrained(tmp_path / "trained")
    runs.commit_copy(tmp_path / "trained", tmp_path / "committed")
    shards = sorted((tmp_path / "committed").glob("*.safetensors"))
    assert len(shards) > 1 and all(f.stat().st_size < 4 * 2**20 for f in shards)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "committed").state_dict()
    assert back.keys() == trained.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in trained.state_dict().items())


# ---- stopping an invocation stops its workers -------------------------------------------------------------------

POOL = """
import os, sys, time
sys.path[:0] = [{paths}]
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
import size_repetition

def forever(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(1)

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=context, initializer=size_repetition.die_with, initargs=(os.getpid(),))
    pool.submit(forever, sys.argv[1])
    while True:
        time.sleep(1)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_invocation_takes_its_workers_with_it(tmp_path):
    paths = ", ".join(repr(str(ROOT / p)) for p in ("benchmarks", "benchmarks/size_repetition", "tests"))
    (tmp_path / "pool.py").write_text(POOL.format(paths=paths))
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, str(tmp_path / "pool.py"), str(pid_file)], cwd=tmp_path)
    try:
        for _ in range(600):  # the worker imports torch before it writes its pid
            if pid_file.is_file() and pid_file.read_text():
                break
            time.sleep(0.5)
        worker = int(pid_file.read_text())
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)  # as a stopped session ends it: no clean-up runs
        parent.wait()
        for _ in range(600):
            if not alive(worker):
                break
            time.sleep(0.5)
        assert not alive(worker)
    finally:
        parent.kill()
