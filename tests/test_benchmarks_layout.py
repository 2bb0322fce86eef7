"""benchmarks/ as a stranger finds it: one shared module at the top, one folder per study, each with a README whose
commands name existing scripts that answer `--help`, and a short RESULTS.md summary whose links hold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NOT_STUDIES = {"results", "work", "__pycache__"}
MAX_RESULTS_LINES = 200
COMMAND = re.compile(r"python (benchmarks/[\w/.-]+\.py)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def study_folders() -> list[Path]:
    return sorted(p for p in BENCH.iterdir() if p.is_dir() and p.name not in NOT_STUDIES)


def readme_scripts() -> list[str]:
    """Every script a study README quotes as `python benchmarks/...py`, each once."""
    found = {m for folder in study_folders() for m in COMMAND.findall((folder / "README.md").read_text())}
    return sorted(found)


def test_only_the_shared_module_at_the_top():
    assert sorted(p.name for p in BENCH.glob("*.py")) == ["bench.py"]


def test_every_study_folder_has_a_readme():
    folders = study_folders()
    assert len(folders) >= 8
    assert [p.name for p in folders if not (p / "README.md").is_file()] == []


def test_flat_module_names_mean_one_file():
    # bench.py puts every study folder on sys.path in name order: a module name two studies defined would mean
    # whichever folder sorts first, from every script.
    names = Counter(p.stem for folder in study_folders() for p in folder.glob("*.py"))
    assert {n for n, count in names.items() if count > 1} == set()


def test_readme_commands_name_existing_scripts():
    scripts = readme_scripts()
    assert len(scripts) >= 10
    assert [s for s in scripts if not (ROOT / s).is_file()] == []


def run_help(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, script, "--help"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_every_readme_script_answers_help():
    scripts = [s for s in readme_scripts() if (ROOT / s).is_file()]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # each one imports torch: in parallel
        done = dict(zip(scripts, pool.map(run_help, scripts), strict=True))
    failed = {s: d.stderr[-2000:] for s, d in done.items() if d.returncode != 0 or "usage:" not in d.stdout}
    assert failed == {}


def test_results_is_a_short_summary_whose_links_exist():
    text = (BENCH / "RESULTS.md").read_text()
    assert len(text.splitlines()) <= MAX_RESULTS_LINES
    assert not re.search(r"\bissues? \d+", text, re.IGNORECASE)  # readers cannot see the issues
    targets = [t.split("#")[0] for t in LINK.findall(text) if not t.startswith(("http://", "https://", "#"))]
    assert len(targets) >= 10
    assert [t for t in targets if not (BENCH / t).exists()] == []


@pytest.mark.parametrize("folder", study_folders(), ids=lambda p: p.name)
def test_study_reports_links_exist(folder):
    for doc in (folder / "README.md", folder / "REPORT.md"):
        if doc.is_file():
            targets = [t.split("#")[0] for t in LINK.findall(doc.read_text())]
            local = [t for t in targets if t and not t.startswith(("http://", "https://"))]
            assert [t for t in local if not (folder / t).exists()] == [], doc
