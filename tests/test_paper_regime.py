"""benchmarks/paper_regime.py's summary step (issue 24): its reading of budgets and cooldown branches by hand-worked
cases, and `--summarise-only` on the committed runs reproducing the committed summary.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import paper_regime  # noqa: E402  (a script folder, put on the path above)


def test_budget_to_target_interpolates_between_the_budgets_run():
    # 0.7 ends at 1.40, 0.8 at 1.30: the target 1.32 is reached 4/5 of the way from 0.7 to 0.8
    assert paper_regime.budget_to_target({0.6: 1.5, 0.7: 1.40, 0.8: 1.30}, 1.32) == pytest.approx(0.78)
    assert paper_regime.budget_to_target({0.6: 1.31, 0.7: 1.30}, 1.32) == 0.6  # the smallest run already reaches it
    assert paper_regime.budget_to_target({0.6: 1.5, 0.8: 1.4}, 1.32) is None  # none reaches it


def test_cooldown_lead_in_steps_of_the_annealed_baseline():
    base = [(100, 2.0), (200, 1.8), (300, 1.7)]
    assert paper_regime.interpolate_step(base, 1.9) == pytest.approx(150)
    assert paper_regime.interpolate_step(base, 1.75) == pytest.approx(250)
    assert paper_regime.interpolate_step(base, 1.6) is None  # beyond the last branch


def test_summarise_only_reproduces_the_committed_summary():
    committed = paper_regime.ROOT / "summary.json"
    if not committed.is_file():
        pytest.skip("no paper-regime runs committed yet")
    stored = json.loads(committed.read_text())
    assert stored, "an empty summary"
    for corpus, summary in stored.items():
        # what `--summarise-only` writes, without writing it: the stored runs, branches and probes read back
        assert json.loads(json.dumps(paper_regime.summarise(corpus))) == summary
