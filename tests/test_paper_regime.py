"""The paper-regime suite's summary step (issue 24, benchmarks/paper_regime/paper_regime_summary.py): its reading of
budgets and cooldown branches by hand-worked cases, its run lists, and `--summarise-only` on the committed runs
reproducing the committed summary.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402  (a script folder, put on the path above)
import paper_regime_plots  # noqa: E402
import paper_regime_runs  # noqa: E402
import paper_regime_summary  # noqa: E402


def test_budget_to_target_interpolates_between_the_budgets_run():
    # 0.7 ends at 1.40, 0.8 at 1.30: the target 1.32 is reached 4/5 of the way from 0.7 to 0.8
    assert paper_regime_summary.budget_to_target({0.6: 1.5, 0.7: 1.40, 0.8: 1.30}, 1.32) == pytest.approx(0.78)
    # the smallest run already reaches it
    assert paper_regime_summary.budget_to_target({0.6: 1.31, 0.7: 1.30}, 1.32) == 0.6
    assert paper_regime_summary.budget_to_target({0.6: 1.5, 0.8: 1.4}, 1.32) is None  # none reaches it
    # 0.8 ends above the target, the full-length run (1.0) below it: 0.8 + 0.2 * 0.010 / 0.023
    reached = paper_regime_summary.budget_to_target({0.8: 1.329, 1.0: 1.306}, 1.319)
    assert reached == pytest.approx(0.8 + 0.2 * 0.01 / 0.023)


def test_cooldown_lead_in_steps_of_the_annealed_baseline():
    base = [(100, 2.0), (200, 1.8), (300, 1.7)]
    assert paper_regime_summary.interpolate_step(base, 1.9) == pytest.approx(150)
    assert paper_regime_summary.interpolate_step(base, 1.75) == pytest.approx(250)
    assert paper_regime_summary.interpolate_step(base, 1.6) is None  # beyond the last branch


def test_summarise_only_reproduces_the_committed_summary():
    committed = paper_regime_runs.ROOT / "summary.json"
    if not committed.is_file():
        pytest.skip("no paper-regime runs committed yet")
    stored = json.loads(committed.read_text())
    assert stored, "an empty summary"
    for corpus, summary in stored.items():
        # what `--summarise-only` writes, without writing it: the stored runs, branches and probes read back
        assert json.loads(json.dumps(paper_regime_summary.summarise(corpus))) == summary


def run_with(curve: list[tuple[int, float]], kd_steps: int) -> bench.RunResult:
    spec = bench.RunSpec("r", model=paper_regime_runs.STUDENT, steps=paper_regime_runs.STEPS)
    return bench.RunResult(
        spec=spec,
        corpus="python",
        device="cpu",
        params=1,
        kd_steps=kd_steps,
        curve_step_test_dev=[[s, t, t] for s, t in curve],
        final_test_loss=curve[-1][1],
        final_dev_loss=curve[-1][1],
        train_wall_s=0.0,
        step_times_s=[],
        median_kd_step_s=None,
        median_plain_step_s=None,
        train_log=[],
    )


def test_rise_after_the_kd_stage_end_against_the_last_evaluation_before_it():
    curve = [(2300, 1.45), (2400, 1.47), (2500, 1.44), (3300, 1.50), (3400, 1.30)]
    # the end at 2,350: the loss at 2,300 is the reference; within 1,000 steps the worst is 1.50 at 3,300
    assert paper_regime_summary.rise_after_end(run_with(curve, 2350)) == pytest.approx(0.05)
    assert paper_regime_summary.rise_after_end(run_with(curve, 2350), window=200) == pytest.approx(0.02)
    falling = [(2300, 1.45), (2400, 1.44), (2500, 1.43)]
    assert paper_regime_summary.rise_after_end(run_with(falling, 2350)) == pytest.approx(-0.01)
    assert paper_regime_summary.rise_after_end(run_with(falling, 0)) is None  # no KD stage


def test_seed_noise_is_the_spread_across_seeds_over_the_second_half():
    half = paper_regime_runs.STEPS // 2
    a = run_with([(100, 9.0), (half, 1.0), (half + 100, 2.0)], 0)
    b = run_with([(100, 1.0), (half, 1.2), (half + 100, 2.4)], 0)
    # the first half's evaluation is left out; stdev of two values is |x - y| / sqrt(2)
    expected = (0.2 / 2**0.5 + 0.4 / 2**0.5) / 2
    assert paper_regime_summary.seed_noise([a, b]) == pytest.approx(expected)
    assert paper_regime_summary.seed_noise([a]) is None


def test_the_figure_is_drawn_from_the_committed_runs(tmp_path):
    summary_path = paper_regime_runs.ROOT / "summary.json"
    if not summary_path.is_file() or "python" not in json.loads(summary_path.read_text()):
        pytest.skip("no paper-regime runs committed yet")
    summary = json.loads(json.dumps(paper_regime_summary.summarise("python")))
    runs = bench.load_runs(paper_regime_runs.runs_dir("python"))
    path = tmp_path / "curves.png"
    paper_regime_plots.plot("python", runs, summary, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_fixed_seeds_block_pairs_each_fixed_run_with_its_seeds_baseline():
    bases = {s: run_with([(100, loss)], 0) for s, loss in ((0, 1.30), (1, 1.28), (2, 1.32))}
    runs = {"fixed_add_r0.2": run_with([(100, 1.29)], 940), "fixed_add_r0.2_s2": run_with([(100, 1.35)], 940)}
    block = paper_regime_summary.fixed_seeds_block(runs, bases)
    assert block["seeds"] == [0, 2]  # seed 1 has no fixed run
    assert block["final_loss"]["seeds"] == [1.29, 1.35]
    assert block["gain_over_baseline"]["seeds"] == pytest.approx([0.01, -0.03])


def test_head_start_reads_the_named_teachers_kd_all_branches(tmp_path, monkeypatch):
    monkeypatch.setattr(paper_regime_runs, "ROOT", tmp_path)
    (tmp_path / "prose").mkdir()
    rows = [
        {"run": "baseline_s0", "step": 470, "mode": "plain", "test": 2.0},
        {"run": "baseline_s0", "step": 940, "mode": "plain", "test": 1.8},
        {"run": "kd_all", "step": 470, "mode": "plain", "test": 1.9},  # halfway to the 940 branch: 235 steps ahead
        {"run": "kd_all_quarter", "step": 470, "mode": "plain", "test": 1.95},  # a quarter of the way: 117.5
    ]
    (tmp_path / "prose" / "cooldowns.json").write_text(json.dumps(rows))
    half = paper_regime_summary.head_start("prose")
    quarter = paper_regime_summary.head_start("prose", kd_run="kd_all_quarter")
    assert half["head_start_ceiling"] == pytest.approx(235 / paper_regime_runs.STEPS)
    assert quarter["head_start_ceiling"] == pytest.approx(117.5 / paper_regime_runs.STEPS)
    assert paper_regime_summary.head_start("prose", kd_run="kd_all_eighth")["head_start_ceiling"] is None  # not run


def with_steps(run: bench.RunResult, steps: int) -> bench.RunResult:
    run.spec.steps = steps
    return run


def test_scale_budget_interpolates_between_the_shortened_and_the_full_run():
    base = with_steps(run_with([(1000, 1.50)], 0), 1000)
    short = with_steps(run_with([(800, 1.56)], 300), 800)  # the 0.8 budget ends 0.06 above the target
    full = with_steps(run_with([(1000, 1.48)], 300), 1000)  # the full run 0.02 below it: 3/4 of the way to 1.0
    row = paper_regime_summary.scale_budget({0.8: short}, full, base, None)
    assert row["budget_finals"] == {0.8: 1.56}
    assert row["budget_to_target"] == pytest.approx(0.8 + 0.2 * 0.06 / 0.08)
    assert row["budget_wallclock_to_target"] is None  # no step costs measured
    assert paper_regime_summary.scale_budget({}, full, base, None) == {}  # no shortened run yet
    # a 0.7 run added below a 0.8 run that reaches the target: interpolated between 0.7 and 0.8
    reach = with_steps(run_with([(800, 1.49)], 300), 800)
    lower = with_steps(run_with([(700, 1.53)], 300), 700)
    row = paper_regime_summary.scale_budget({0.7: lower, 0.8: reach}, full, base, None)
    assert row["budget_to_target"] == pytest.approx(0.7 + 0.1 * 0.03 / 0.04)


def test_scale_seeds_pairs_each_seeds_auto_with_its_own_baseline():
    base0, auto0 = run_with([(50, 1.6), (100, 1.50)], 0), run_with([(50, 1.49), (100, 1.47)], 40)
    runs = {"baseline_scale_1m_s1": run_with([(50, 1.7), (100, 1.40)], 0)}
    # seed 1's automatic stop not run yet
    assert paper_regime_summary.scale_seeds(runs, "1m", auto0, base0, None) == {}
    runs["auto_scale_1m_s1"] = run_with([(50, 1.45), (100, 1.41)], 40)  # never reaches its own baseline's 1.40
    runs["auto_scale_1m_s1"].spec.seed = 1
    row = paper_regime_summary.scale_seeds(runs, "1m", auto0, base0, None)
    assert row["seeds"] == [0, 1]
    assert row["gain_over_baseline_seeds"]["seeds"] == pytest.approx([0.03, -0.01])
    assert row["steps_to_target_ratio_seeds"]["seeds"] == [50 / paper_regime_runs.STEPS, None]
    assert row["steps_to_target_ratio_seeds"]["reached"] == "1/2"


def test_scale_more_runs_adds_the_smaller_budget_only_once_the_larger_one_reached(tmp_path, monkeypatch):
    monkeypatch.setattr(paper_regime_runs, "ROOT", tmp_path)
    monkeypatch.setattr(paper_regime_runs, "scale_steps", lambda model: 1000)
    names = [r.name for r in paper_regime_runs.scale_more_runs("python")]
    assert names == ["baseline_scale_1m_s1", "auto_scale_1m_s1"]  # nothing stored: no budget runs known yet
    runs = tmp_path / "python" / "runs"
    runs.mkdir(parents=True)
    with_steps(run_with([(1000, 1.30)], 0), 1000).save(runs / "baseline_scale_1m.json")
    with_steps(run_with([(800, 1.31)], 400), 800).save(runs / "auto_scale_1m_budget_0.8.json")
    assert len(paper_regime_runs.scale_more_runs("python")) == 2  # 0.8 ended above the baseline: no 0.7 run
    with_steps(run_with([(800, 1.29)], 400), 800).save(runs / "auto_scale_1m_budget_0.8.json")
    more = paper_regime_runs.scale_more_runs("python")
    assert [r.name for r in more][-1] == "auto_scale_1m_budget_0.7"
    assert more[-1].steps == 700 and more[-1].extra["kd_steps"] == "auto"


def test_stacked_block_measures_salt_against_the_stacked_baseline():
    plain = run_with([(100, 1.32)], 0)
    runs = {
        "baseline_stacked": run_with([(100, 1.30)], 0),  # the speed-ups alone gain 0.02 over the plain baseline
        "auto_stacked_budget_0.7": run_with([(100, 1.33)], 900),
        "auto_stacked_budget_0.8": run_with([(100, 1.29)], 900),  # reaches 1.30: 3/4 of the way from 0.7
    }
    block = paper_regime_summary.stacked_block(runs, plain, None)
    assert block["speedups_gain_over_plain_baseline"] == pytest.approx(0.02)
    assert block["budget_finals"] == {0.7: 1.33, 0.8: 1.29}
    assert block["budget_to_target"] == pytest.approx(0.7 + 0.1 * 0.03 / 0.04)
    assert block["budget_wallclock_to_target"] is None
    assert paper_regime_summary.stacked_block({}, plain, None) == {}  # the stacked baseline not run yet


def test_seed_baselines_are_the_main_students_only():
    runs = {
        n: run_with([(100, 1.3)], 0) for n in ("baseline_s0", "baseline_s2", "baseline_scale_1m", "baseline_stacked")
    }
    runs["baseline_s2"].spec.seed = 2
    assert paper_regime_summary.seed_baselines(runs) == {0: runs["baseline_s0"], 2: runs["baseline_s2"]}
