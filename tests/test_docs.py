"""The documentation cannot rot: every Python block of README.md and docs/*.md runs, and the site builds strictly.

Each file's ```python blocks run in order in one fresh namespace (a later block may use an earlier one's names, as a
reader would), in a temporary working directory, offline. Blocks in other languages (bash, yaml, text) are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fenced block: the opening fence's language, then everything up to a closing fence of the same indentation.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
MAX_README_LINES = 200


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of its first code line, source) of every ```python block, in order."""
    blocks = []
    for match in FENCE.finditer(text):
        if match["lang"] == "python":
            line = text.count("\n", 0, match.start()) + 2
            indent = len(match["indent"])
            blocks.append((line, "".join(row[indent:] for row in match["body"].splitlines(keepends=True))))
    return blocks


def test_extractor_finds_python_blocks_only():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n  ```python\n  y = x + 1\n  ```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x + 1\n")]


# one intra-op thread: tiny models on a busy 2-core machine run several times faster (see conftest.one_thread)
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip("no Python block")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for line, source in blocks:
        # padded with blank lines so that a traceback names the line of the page
        code = compile("\n" * (line - 1) + source, str(page.relative_to(ROOT)), "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples


def test_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    for figure in ("docs/figures/fig1_curves.png", "docs/figures/fig2_scale.png"):
        assert figure in text and (ROOT / figure).is_file()
    # every relative link of the README points at a file of the repository (mkdocs checks the docs' own links)
    for target in re.findall(r"\]\(((?!https?://)[^)#\s]+)", text):
        assert (ROOT / target).exists(), target


def test_docs_build_strict(tmp_path):
    """`make docs` in a temporary folder: mkdocs --strict fails on any warning (a broken link, anchor or API name)."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [mkdocs, "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    api = (tmp_path / "site" / "salt_trainer" / "index.html").read_text(encoding="utf-8")
    # the generated table of SALTConfig's fields, with their help texts
    assert "kd_mix" in api and "How NLL and KD combine at weight w" in api
    assert (tmp_path / "site" / "quickstart" / "index.html").is_file()
    assert (tmp_path / "site" / "figures" / "fig1_curves.png").is_file()
